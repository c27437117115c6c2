"""Issue 11's lr-finder targets as issue 36 §4 decides them: the grid's top and the three verdicts
of benchmarks/lr_finder_regret.py, old reading and new, on a hand-made grid (nothing trains)."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks" / "lr_finder_regret.py"


@pytest.fixture(scope="module")
def bench() -> dict:
    return runpy.run_path(str(BENCH), run_name="lr_finder_regret")


# a flat top: 0.01 is the 2-seed argmax; 0.03, 0.1 and 0.3 trail it by 0.2, 0.4 and exactly 1.0
# point (inside the top), 0.003 by 1.01 (outside); the rest fall away
FLAT = {0.001: 0.80, 0.003: 0.8999, 0.01: 0.91, 0.03: 0.9080, 0.1: 0.9060, 0.3: 0.90, 1.0: 0.10}


def test_the_top_is_the_grid_lrs_within_one_point_of_the_best(bench):
    assert bench["grid_top"](FLAT) == [0.01, 0.03, 0.1, 0.3]  # 0.3 is exactly 1.00 behind
    # a sharp top is the argmax alone; a wider target widens it
    sharp = {0.01: 0.70, 0.1: 0.92, 1.0: 0.85}
    assert bench["grid_top"](sharp) == [0.1]
    assert bench["grid_top"](sharp, target=8.0) == [0.1, 1.0]


def test_old_and_new_readings_differ_on_a_flat_top(bench):
    verdict = bench["verdict"]
    # lr 0.2: 20x the argmax (old: no) but 1.5x of top lr 0.3 (new: yes); its range
    # [0.02, 0.25] misses the argmax (old: no) but holds 0.03 and 0.1 (new: yes); 0.8 points behind
    v = verdict(FLAT, 0.2, 0.902, (0.02, 0.25))
    assert v.best_lr == 0.01 and v.top == (0.01, 0.03, 0.1, 0.3)
    assert v.regret == pytest.approx(0.8) and v.regret_ok
    assert (v.old_within, v.old_range) == (False, False)
    assert (v.new_within, v.new_range) == (True, True)
    assert v.nearest_top == 0.3 and v.top_in_range == (0.03, 0.1)
    # the regret target is the same in both readings: 1.01 points behind fails it
    assert not verdict(FLAT, 0.2, 0.8999, (0.02, 0.25)).regret_ok
    # exactly 1.00 point behind meets it (no float error past the target)
    assert verdict(FLAT, 0.2, 0.90, (0.02, 0.25)).regret_ok
    # within 3x of the top's edge still counts, beyond it does not, whatever the regret
    assert verdict(FLAT, 0.85, 0.5, (1, 2)).new_within  # 2.8x of top lr 0.3
    assert not verdict(FLAT, 0.95, 0.5, (1, 2)).new_within  # 3.2x
    assert not verdict(FLAT, 0.95, 0.5, (1, 2)).new_range  # no top lr in [1, 2]
    # near the argmax both readings agree
    v = verdict(FLAT, 0.012, 0.91, (0.0004, 0.036))
    assert (v.old_within, v.old_range, v.new_within, v.new_range) == (True, True, True, True)


def test_a_rule_that_gives_no_lr_fails_every_target(bench):
    v = bench["verdict"](FLAT, None)
    assert v.regret == math.inf and not v.regret_ok
    assert not (v.old_within or v.old_range or v.new_within or v.new_range)


def test_the_counts_and_the_five_of_six(bench):
    verdict, checks = bench["verdict"], bench["target_checks"]
    flat_miss = verdict(FLAT, 0.2, 0.902, (0.02, 0.25))  # old no/no, new yes/yes
    hit = verdict(FLAT, 0.012, 0.91, (0.0004, 0.036))
    six = [flat_miss] + [hit] * 5
    old, new = checks(six, "old"), checks(six, "new")
    assert [(got, n, ok) for _, got, n, ok in old] == [(6, 6, True), (5, 6, True), (5, 6, False)]
    assert [(got, n, ok) for _, got, n, ok in new] == [(6, 6, True), (6, 6, True), (6, 6, True)]
    two_misses = [flat_miss] * 2 + [hit] * 4
    assert [ok for *_, ok in checks(two_misses, "old")] == [True, False, False]
    assert [ok for *_, ok in checks(two_misses, "new")] == [True, True, True]
