"""cpu_memory.py: on glibc, freed training buffers are reused, not faulted in again each step,
and handed back after the run.

The allocator's settings are process-wide, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# one training step's 38.5 MiB activation (128 x 96 x 28 x 28 fp32), in pages
ACTIVATION_PAGES = 128 * 96 * 28 * 28 * 4 // resource.getpagesize()

# after `setup`, which sets `result`: 12 fp32 training steps of the cpu profile's model at batch
# 128 on one thread, as an ablation worker takes them; print the result and each step's minor
# page faults
HEAD = """
import json, resource, torch
from nin_search.engine import cpu_memory
"""
PROBE = """
from nin_search.engine.config import load_config
from nin_search.engine.model import build_model
from nin_search.engine.train import make_optimizer, train_step

torch.set_num_threads(1)
cfg = load_config(profile="cpu")
net = build_model(cfg.model, 28).to(memory_format=torch.channels_last)
opt = make_optimizer(cfg.train, net.parameters())
x = torch.rand(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
faults = []
for i in range(12):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train_step(net, opt, torch.nn.CrossEntropyLoss(), x, y, torch.device("cpu"), "fp32")
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(result, json.dumps(faults))
"""


def clean_env() -> dict[str, str]:
    """This environment without anything that sets malloc's or torch's memory behaviour."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_")
        and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS")
    }


def probe(setup: str, **env: str) -> tuple[str, list[int]]:
    res = subprocess.run(
        [sys.executable, "-c", HEAD + textwrap.dedent(setup) + PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env() | env,
    )
    assert res.returncode == 0, res.stderr
    result, faults = res.stdout.split(maxsplit=1)
    return result, json.loads(faults)


def test_kept_memory_is_reused_without_page_faults():
    # glibc as it comes: about 34,000 faults a step on 4 KiB pages, 900 with it (RESULTS.md);
    # the heap settles in the first few steps, then most steps fault in nothing. Some steps still
    # fault 134-18,817 pages (often a multiple of 1,568): 0-3 of the 9 steps after 3, in 34 runs
    # with up to three processes beside the probe (2-core Zen 3, no swap, 2026-12-07); once in CI
    # 3 of the last 4 did. So the test takes the median of those 9 steps: 0 in all 34 runs. Their
    # mean, 0-3,223 there, stays far under the control's (over 30,000, the next test)
    kept, faults = probe("result = cpu_memory.keep_cpu_memory()")
    assert kept == "True"
    assert statistics.median(faults[3:]) < ACTIVATION_PAGES / 4, faults
    assert statistics.mean(faults[3:]) < ACTIVATION_PAGES, faults


@pytest.mark.skipif(
    THP.exists() and "[always]" in THP.read_text(), reason="huge pages hide the faults"
)
def test_without_it_glibc_faults_the_activations_in_again_step_after_step():
    # the probe itself is sound: glibc's default maps large buffers afresh step after step, but
    # not in every step: one step faults 0 to 96,000 pages (2-core Zen 3, 2026-12-07). So the
    # test takes the mean over the steps after 3, as benchmarks/cpu_allocator.py counts them:
    # 30,000-62,000 in 8 runs, 26,600-56,800 in 10 more (two at a time), and 14,464 once in CI
    # (the suite beside it), under the 2 activations (18,816) this asserted until then. The line
    # is the kept test's: one activation, below every default mean seen and above every kept one
    _, faults = probe("result = None")
    assert statistics.mean(faults[3:]) > ACTIVATION_PAGES, faults


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_ARENA_MAX": "2"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"},
        {"LD_PRELOAD": "libjemalloc.so.2-not-loaded"},  # named only: the check reads the name
    ],
)
def test_a_users_own_malloc_choice_is_left_alone(env):
    # the choice is read from the environment the process starts with: a fresh interpreter,
    # but no training steps after it (what the faults would be is the tests above)
    script = "from nin_search.engine import cpu_memory\nprint(cpu_memory.keep_cpu_memory())"
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env() | env,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False"]


# a tiny run of each kind on 48 random images, in a fresh interpreter
TINY = """
from nin_search.engine.config import load_config
from nin_search.engine.data import split_data
from nin_search.engine.lr_finder import find_lr
from nin_search.engine.train import fit
cfg = load_config(overrides=["model.preset=lin2013", "model.width=0.125", "data.resize=0",
                             "data.val_size=16", "train.epochs=1", "train.batch_size=16",
                             "lr_finder.num_iter=10"])
x = torch.randint(0, 255, (48, 28, 28), dtype=torch.uint8)
data = split_data(x, torch.randint(0, 10, (48,)), cfg.data, "cpu")
"""


@pytest.mark.parametrize("run", ["fit", "find_lr"])
def test_training_on_the_cpu_turns_it_on(run):
    script = HEAD + textwrap.dedent(TINY) + f"{run}(cfg, data)\nprint(cpu_memory._kept)"
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True"]


RELEASE = """
import resource, torch
from nin_search.engine import cpu_memory

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

cpu_memory.keep_cpu_memory()
block = torch.ones(64 * 2**20)  # 256 MiB, from the heap
del block
kept = resident_mib()
cpu_memory.release_cpu_memory()
print(round(kept - resident_mib()))
"""


def test_release_hands_the_free_heap_back():
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RELEASE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) > 200  # of the 256 MiB block kept after del, in MiB
