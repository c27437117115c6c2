"""Per-arm statistics of a seed-paired ablation, from scipy.stats.

For each arm: the lr it trained at, n, mean, sd (ddof 1) and the 95% CI of the mean (Student's
t); the paired difference to the baseline over the seeds both finished, its 95% CI and the
two-sided p-value of the paired t-test (scipy.stats.ttest_rel). With more than two arms every
p-value against the baseline is also given Holm-corrected (p_holm: Holm 1979, step-down, family
= the arms other than the baseline); with >= 6 pairs, the Wilcoxon signed-rank p as well
(p_wilcoxon, scipy.stats.wilcoxon, two-sided). With test-set values (--final-eval) the test
columns get the same paired statistics (test_delta ... test_p_holm); they are only reported.

Convergence: last_gain is the mean over an arm's finished seeds of the val accuracy gained over
its last 10% of epochs (at least the last one); converged is last_gain < CONVERGED_GAIN, 0.5
points: an arm still gaining that much per last tenth of its training could change a verdict
of that size with more epochs, so its verdict may reflect training speed. at_chance counts the
finished seeds that ended at chance (chance.py; a run that had learned and fell there is
stopped as diverged instead): flat at chance is no convergence, so such an arm is not
converged. Diverged runs (a non-finite loss, or a collapse to chance) have no value: they are
counted, not averaged, and drop out of the pairs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

TEST = (
    "p_value, delta_ci_low/high: paired t-test (scipy.stats.ttest_rel), two-sided; "
    "ci_low/high and the delta CI: 95% from Student's t"
)


HOLM = "p_holm: the t-test's p Holm-corrected over the arms compared with the baseline"


WILCOXON = "p_wilcoxon: Wilcoxon signed-rank test (scipy.stats.wilcoxon), two-sided"


WILCOXON_MIN = 6  # pairs; below that its smallest possible two-sided p is 0.0625 or more


CONVERGED_GAIN = 0.005  # val accuracy (0.5 points) gained over the last 10% of epochs


COLUMNS = [
    "arm", "lr", "n", "mean", "sd", "ci_low", "ci_high",
    "delta", "delta_ci_low", "delta_ci_high", "p_value",
    "params", "macs", "img_per_s", "epoch_time_s", "peak_mem_mib", "diverged",
    "last_gain", "converged", "at_chance",
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


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaNs stay NaN, out of the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), NAN)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):  # (m - rank) * p, made monotone, capped at 1
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def wilcoxon(a: list[float], b: list[float]) -> float:
    """The signed-rank test's two-sided p over the pairs; NaN below WILCOXON_MIN pairs or when
    every difference is zero."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < WILCOXON_MIN or np.all(np.abs(d) <= 1e-12):
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d).pvalue)


def last_gain(curve: list[float] | None) -> float:
    """Val accuracy gained over the last 10% of a curve's epochs (at least the last one)."""
    if not curve or len(curve) < 2:
        return NAN
    k = max(1, round(0.1 * len(curve)))
    return float(curve[-1] - curve[-1 - k])


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else NAN


def _pairs(mine: pd.DataFrame, base: pd.DataFrame, col: str) -> pd.DataFrame:
    a = mine.dropna(subset=[col]).set_index("seed")[col].rename("a")
    b = base.dropna(subset=[col]).set_index("seed")[col].rename("b")
    return a.to_frame().join(b, how="inner")


def compare(
    cells: pd.DataFrame, baseline: str, lrs: dict[str, float] | None = None
) -> pd.DataFrame:
    """The summary table from one row per cell (arm, seed, state, value, test_acc, params,
    macs, img_per_s, epoch_time_s, peak_mem_mib, optionally val_acc curves), arms in their file
    order; lrs: the train.lr each arm trained at."""
    done = cells[cells["state"] == "complete"]
    base = done[done["arm"] == baseline]
    has_test = cells["test_acc"].notna().any()
    rows = []
    for arm in dict.fromkeys(cells["arm"]):
        mine = done[done["arm"] == arm]
        row = {"arm": arm, "lr": (lrs or {}).get(arm, NAN)} | describe(list(mine["value"]))
        pairs = _pairs(mine, base, "value")
        row |= paired(list(pairs["a"]), list(pairs["b"]))
        row["p_wilcoxon"] = wilcoxon(list(pairs["a"]), list(pairs["b"]))
        if has_test:
            t = describe(list(mine["test_acc"].dropna()))
            row |= {f"test_{k}": v for k, v in t.items() if k != "n"}
            tp = _pairs(mine, base, "test_acc")
            row |= {f"test_{k}": v for k, v in paired(list(tp["a"]), list(tp["b"])).items()}
            row["test_p_wilcoxon"] = wilcoxon(list(tp["a"]), list(tp["b"]))
        everyone = cells[cells["arm"] == arm]
        for key in ("params", "macs", "img_per_s", "epoch_time_s", "peak_mem_mib"):
            row[key] = _mean(everyone[key])
        row["diverged"] = int((everyone["state"] == "diverged").sum())
        row["missing"] = int((everyone["state"] == "missing").sum())
        curves = mine["val_acc"] if "val_acc" in mine else []
        row["last_gain"] = _mean(last_gain(c) for c in curves)
        # None when it cannot be told: no seed finished, or curves of one epoch
        known = row["n"] and not math.isnan(row["last_gain"])
        row["converged"] = bool(row["last_gain"] < CONVERGED_GAIN) if known else None
        row["at_chance"] = int(mine["at_chance"].sum()) if "at_chance" in mine else 0
        if row["at_chance"]:  # flat at chance: nothing learned, nothing converged
            row["converged"] = False
        rows.append(row)
    table = pd.DataFrame(rows)
    others = table["arm"] != baseline
    extra = ["missing"]
    if len(table) > 2:  # a family of comparisons: Holm over the arms against the baseline
        for prefix in ("", "test_") if has_test else ("",):
            table[f"{prefix}p_holm"] = NAN
            table.loc[others, f"{prefix}p_holm"] = holm(
                list(table.loc[others, f"{prefix}p_value"])
            )
    if table["p_wilcoxon"].notna().any():
        extra.append("p_wilcoxon")
    extra += ["p_holm"] if "p_holm" in table else []
    tests = ["test_mean", "test_sd", "test_ci_low", "test_ci_high", "test_delta",
             "test_delta_ci_low", "test_delta_ci_high", "test_p_value"]  # fmt: skip
    tests += [c for c in ("test_p_wilcoxon", "test_p_holm") if c in table]
    if "test_p_wilcoxon" in table and table["test_p_wilcoxon"].isna().all():
        tests.remove("test_p_wilcoxon")
    table = table[COLUMNS + extra + (tests if has_test else [])]
    if table["peak_mem_mib"].isna().all():  # CPU runs have no peak
        table = table.drop(columns="peak_mem_mib")
    for key in ("params", "macs"):
        table[key] = table[key].round().astype("Int64")
    return table
