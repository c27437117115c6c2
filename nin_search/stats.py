"""Per-arm statistics of a seed-paired ablation, all from scipy.stats.

For each arm: n, mean, sd (ddof 1) and the 95% CI of the mean (Student's t); the paired
difference to the baseline over the seeds both finished, its 95% CI and the two-sided p-value
of the paired t-test (scipy.stats.ttest_rel). Diverged runs have no value: they are counted,
not averaged, and drop out of the pairs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

TEST = "paired t-test (scipy.stats.ttest_rel), two-sided; 95% CIs from Student's t"
COLUMNS = [
    "arm", "n", "mean", "sd", "ci_low", "ci_high",
    "delta", "delta_ci_low", "delta_ci_high", "p_value",
    "params", "macs", "img_per_s", "epoch_time_s", "peak_mem_mib", "diverged",
]  # fmt: skip
NAN = float("nan")


def describe(x: list[float], level: float = 0.95) -> dict[str, float]:
    """n, mean, sd and the CI of the mean; sd and CI are NaN below two values."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": NAN, "sd": NAN, "ci_low": NAN, "ci_high": NAN}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": NAN, "ci_low": NAN, "ci_high": NAN}
    sd = float(x.std(ddof=1))
    if sd == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    return {"n": n, "mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high)}


def paired(a: list[float], b: list[float], level: float = 0.95) -> dict[str, float]:
    """mean(a - b), its CI and the paired t-test's p-value (NaN below two pairs or when every
    difference is the same)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = a - b
    out = {"delta": float(d.mean()) if len(d) else NAN}
    if len(d) < 2 or np.ptp(d) <= 1e-12:  # no spread: t is undefined
        return out | {"delta_ci_low": NAN, "delta_ci_high": NAN, "p_value": NAN}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(level)
    return out | {
        "delta_ci_low": float(ci.low),
        "delta_ci_high": float(ci.high),
        "p_value": float(res.pvalue),
    }


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else NAN


def compare(cells: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The summary table from one row per cell (arm, seed, state, value, test_acc, params,
    macs, img_per_s, epoch_time_s, peak_mem_mib), arms in their file order."""
    done = cells[cells["state"] == "complete"]
    base = done[done["arm"] == baseline].set_index("seed")["value"]
    has_test = cells["test_acc"].notna().any()
    rows = []
    for arm in dict.fromkeys(cells["arm"]):
        mine = done[done["arm"] == arm]
        row = {"arm": arm} | describe(list(mine["value"]))
        pairs = mine.set_index("seed")["value"].to_frame("a").join(base.rename("b"), how="inner")
        row |= paired(list(pairs["a"]), list(pairs["b"]))
        if has_test:
            t = describe(list(mine["test_acc"].dropna()))
            row |= {f"test_{k}": v for k, v in t.items() if k != "n"}
        everyone = cells[cells["arm"] == arm]
        for key in ("params", "macs", "img_per_s", "epoch_time_s", "peak_mem_mib"):
            row[key] = _mean(everyone[key])
        row["diverged"] = int((everyone["state"] == "diverged").sum())
        row["missing"] = int((everyone["state"] == "missing").sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    tests = [c for c in ("test_mean", "test_sd", "test_ci_low", "test_ci_high") if c in table]
    table = table[COLUMNS + ["missing"] + tests]
    if table["peak_mem_mib"].isna().all():  # CPU runs have no peak
        table = table.drop(columns="peak_mem_mib")
    for key in ("params", "macs"):
        table[key] = table[key].round().astype("Int64")
    return table


__all__ = ["describe", "paired", "compare", "TEST", "COLUMNS"]
