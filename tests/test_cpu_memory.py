"""keep_cpu_memory(): on glibc, freed training buffers are reused, not faulted in again each step.

The allocator's settings are process-wide, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
BLOCK_PAGES = 64 * 2**20 // 4096  # a 64 MiB tensor in 4 KiB pages

# after `setup`, which sets `result`: allocate and fill a 64 MiB tensor 5 times, freeing it each
# time; print the result and the minor page faults of the last 3 allocations, per allocation (glibc
# settles after two: the second can still fault in the heap's new top)
HEAD = """
import resource, torch
from nin_search import train
"""
PROBE = """
for i in range(5):
    if i == 2:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)
    del block
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 3
print(result, faults)
"""


def probe(setup: str, **env: str) -> tuple[str, float]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }
    res = subprocess.run(
        [sys.executable, "-c", HEAD + textwrap.dedent(setup) + PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean | env,
    )
    assert res.returncode == 0, res.stderr
    result, faults = res.stdout.split()
    return result, float(faults)


def test_kept_memory_is_reused_without_page_faults():
    kept, faults = probe("result = train.keep_cpu_memory()")
    assert kept == "True"
    assert faults < BLOCK_PAGES / 100  # 16,384 pages a block; at most a few stray ones


@pytest.mark.skipif(
    THP.exists() and "[always]" in THP.read_text(), reason="huge pages hide the faults"
)
def test_without_it_glibc_faults_every_page_of_a_large_block_in_again():
    # the probe itself is sound: glibc's default maps each 64 MiB block afresh
    _, faults = probe("result = None")
    assert faults > BLOCK_PAGES / 2


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_ARENA_MAX": "2"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"},
        {"LD_PRELOAD": "libjemalloc.so.2-not-loaded"},  # named only: the check reads the name
    ],
)
def test_a_users_own_malloc_choice_is_left_alone(env):
    kept, _ = probe("result = train.keep_cpu_memory()", **env)
    assert kept == "False"


FIT = """
from nin_search.config import load_config
from nin_search.data import split_data
from nin_search.train import fit
cfg = load_config(overrides=["model.preset=lin2013", "model.width=0.125", "data.resize=0",
                             "data.val_size=16", "train.epochs=1", "train.batch_size=16"])
x = torch.randint(0, 255, (48, 28, 28), dtype=torch.uint8)
y = torch.randint(0, 10, (48,))
fit(cfg, split_data(x, y, cfg.data, "cpu")).status
"""
FINDER = """
from nin_search.config import load_config
from nin_search.data import split_data
from nin_search.lr_finder import find_lr
cfg = load_config(overrides=["model.preset=lin2013", "model.width=0.125", "data.resize=0",
                             "data.val_size=16", "train.batch_size=16", "lr_finder.num_iter=10"])
x = torch.randint(0, 255, (48, 28, 28), dtype=torch.uint8)
y = torch.randint(0, 10, (48,))
find_lr(cfg, split_data(x, y, cfg.data, "cpu")).status
"""


@pytest.mark.parametrize("run", [FIT, FINDER], ids=["fit", "lr-finder"])
def test_training_on_the_cpu_turns_it_on(run):
    kept, faults = probe(run + "result = train._kept_cpu_memory")
    assert kept == "True"
    assert faults < BLOCK_PAGES / 100
