"""benchmarks/throughput.py's "% of peak": the CPU's FLOPs per cycle from its flags, vendor,
family and model, without running the benchmark (issue 34, item 4.12)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "throughput.py"
_spec = importlib.util.spec_from_file_location("throughput", BENCH)
throughput = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(throughput)  # only defines functions: main() runs under __main__

AVX2 = {"sse", "sse2", "avx", "fma", "avx2"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}

# A Zen 3 KVM guest as /proc/cpuinfo shows it (benchmarks/RESULTS.md's fp32 host), trimmed
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
cpu MHz\t\t: 2445.406
flags\t\t: fpu sse sse2 ht avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
flags\t\t: fpu sse sse2 ht avx fma avx2 bmi2
"""


@pytest.mark.parametrize(
    ("cpu", "flags", "vendor", "family", "model", "precision", "per_cycle"),
    [
        ("Zen 3 (AVX2 only)", AVX2, "AuthenticAMD", 0x19, 0x01, "fp32", 32),
        ("Zen 4 (AVX-512 on 256-bit halves)", AVX512, "AuthenticAMD", 0x19, 0x11, "fp32", 32),
        ("Zen 4 bf16", AVX512, "AuthenticAMD", 0x19, 0x11, "bf16", 64),
        ("Zen 5 EPYC (512-bit pipes)", AVX512, "AuthenticAMD", 0x1A, 0x02, "fp32", 64),
        ("Zen 5 EPYC bf16", AVX512, "AuthenticAMD", 0x1A, 0x02, "bf16", 128),
        ("Zen 5 Strix Point (256-bit halves)", AVX512, "AuthenticAMD", 0x1A, 0x24, "fp32", 32),
        ("Zen 2", AVX2, "AuthenticAMD", 0x17, 0x31, "fp32", 32),
        ("Zen 1 (128-bit FMA pipes)", AVX2, "AuthenticAMD", 0x17, 0x01, "fp32", 16),
        ("Sapphire Rapids fp32", AVX512 | {"amx_bf16"}, "GenuineIntel", 6, 143, "fp32", 64),
        ("Sapphire Rapids bf16", AVX512 | {"amx_bf16"}, "GenuineIntel", 6, 143, "bf16", 1024),
        ("Sandy Bridge (AVX, no FMA)", {"sse2", "avx"}, "GenuineIntel", 6, 42, "fp32", 16),
    ],
)
def test_flops_per_cycle_follows_the_vector_unit(
    cpu: str, flags: set[str], vendor: str, family: int, model: int, precision: str, per_cycle: int
):
    got, how = throughput.flops_per_cycle(flags, vendor, family, model, precision)
    # the table's figure for this CPU, and the line printed beside the % names the unit assumed
    assert got == per_cycle, (cpu, how)
    assert ("BF16" in how) == (precision == "bf16") and ("AVX" in how or "AMX" in how)


def test_zen3_guest_cpuinfo_reads_as_avx2():
    flags, vendor, family, model = throughput.cpu_identity(ZEN3)
    assert (vendor, family, model) == ("AuthenticAMD", 25, 1) and "avx512f" not in flags
    per_cycle, how = throughput.flops_per_cycle(flags, vendor, family, model, "fp32")
    # 32, not AVX-512's 64: issue 34's 83.6 GFLOP/s on 2 cores at 2.445 GHz is 53%, not 26.7%
    assert per_cycle == 32 and "AVX2" in how
