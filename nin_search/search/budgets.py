"""Accuracy against size: multi-objective studies (a Pareto front) and budget constraints.

    objective = ["best_val_acc", "macs"]      # a study file: accuracy up, MACs down, no pruner
    [constraints]                             # or one objective under a budget, pruned as usual
    "macs" = { max = 200e6 }
    [reference]                               # optional: the base config's measured accuracy
    best_val_acc = 0.9218

Sizes (macs, params) come from the config before training (accounting.summarize), so an
over-budget sample is rejected before any data is read: it ends PRUNED and untrained, with
its size in its user attrs and its constraints (size / max - 1, > 0 when over) set through
Trial.set_constraint, and it does not count towards n_trials. TPE reads trials in the PRUNED
state and ranks infeasible ones below every feasible one (optuna/samplers/_tpe/sampler.py,
_split_trials), so it learns to avoid them; NSGA-II and GP model complete trials only, so
[constraints] needs the TPE sampler. epoch_time_s is the fit's mean epoch time.
The parsing half of this module is standard library only (study files load without optuna).
"""

from __future__ import annotations

from pathlib import Path

from nin_search.engine.errors import first_line
from nin_search.search.studies import best_config, counted
from nin_search.spec.objectives import BUDGETS, SIZES, reference
from nin_search.spec.study import OBJECTIVES, Study, directions, is_multi


def budget(study: Study, trial, size: dict) -> str:
    """Set the trial's constraints (size / max - 1: > 0 over budget) on the Optuna trial, before
    it trains; the reason it is rejected, or "" when it fits."""
    over = []
    for key, top in study.constraints.items():
        trial.set_constraint(key, size[key] / top - 1.0)
        if size[key] > top:
            over.append(f"{key} {size[key]:,} > max {top:,.0f}")
    return f"over budget: {', '.join(over)}" if over else ""


def dominated(ostudy, values: tuple[float, ...]) -> bool:
    """Whether a complete trial is at least as good in every objective and better in one."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = [1 if d == StudyDirection.MAXIMIZE else -1 for d in ostudy.directions]
    mine = [s * v for s, v in zip(sign, values, strict=True)]
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        theirs = [s * v for s, v in zip(sign, t.values, strict=True)]
        if all(a >= b for a, b in zip(theirs, mine, strict=True)) and theirs != mine:
            return True
    return False


def _names(ostudy, spec: dict) -> list[str]:
    names = spec.get("objectives") or []
    if len(names) == len(ostudy.directions):
        return names
    return [f"value_{i}" for i in range(len(ostudy.directions))]


def front_frame(ostudy, spec: dict):
    """The Pareto-optimal trials (study.best_trials): trial, objectives, params, macs, values."""
    import pandas as pd

    names, rows = _names(ostudy, spec), []
    for t in sorted(ostudy.best_trials, key=lambda t: t.number):
        row = {"trial": t.number} | {
            n: int(v) if n in BUDGETS else v for n, v in zip(names, t.values, strict=True)
        }
        for key in ("params", "macs"):
            row.setdefault(key, t.user_attrs.get(key))
        rows.append(row | t.params)
    frame = pd.DataFrame(rows, columns=None if rows else ["trial", *names, "params", "macs"])
    size = next((n for n in names if n in SIZES), None)
    return frame.sort_values(size or "trial", kind="stable") if rows else frame


def _table(frame) -> str:
    shown = frame.copy().astype(object)
    for col in frame.columns:
        if col in ("params", "macs"):
            shown[col] = [f"{int(v):,}" if v == v and v is not None else "" for v in frame[col]]
        elif frame[col].dtype.kind == "f":
            shown[col] = [f"{v:.4g}" if v == v else "" for v in frame[col]]
    return shown.to_string(index=False)


def over_budget(ostudy) -> tuple[int, int]:
    """(samples rejected over budget, samples checked): every finished trial is a sample."""
    from optuna.trial import TrialState

    done = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(not counted(t) for t in done), len(done)


def summary_lines(study: Study, ostudy) -> list[str]:
    """The closing summary's lines on the front and the budget (none for a plain study)."""
    lines = []
    if study.constraints:
        over, n = over_budget(ostudy)
        limits = ", ".join(f"{k} <= {v:,.0f}" for k, v in study.constraints.items())
        lines.append(
            f"budget {limits}: {over} of {n} samples over budget (rejected untrained, "
            "not counted in n_trials)"
        )
    if is_multi(study):
        frame = front_frame(ostudy, {"objectives": study.objectives})
        pairs = zip(study.objectives, directions(study), strict=True)
        wanted = ", ".join(f"{n} ({d[:3]})" for n, d in pairs)
        lines.append(f"Pareto front of {wanted}: {len(frame)} trials")
        if len(frame):
            lines.append(_table(frame))
    return lines


def log_front(study: Study, ostudy, parent: str) -> None:
    """The Pareto front on the study's MLflow parent run: pareto_front.csv and a tag."""
    import mlflow

    frame = front_frame(ostudy, {"objectives": study.objectives})
    client = mlflow.MlflowClient()
    try:
        client.log_text(parent, frame.to_csv(index=False), "pareto_front.csv")
        client.set_tag(parent, "nin.pareto_trials", ",".join(map(str, sorted(frame["trial"]))))
    except mlflow.exceptions.MlflowException as e:
        print(f"Pareto front not logged to MLflow ({first_line(e, 200)})")


def pareto_report(ostudy, spec: dict, out: Path) -> tuple[list[str], dict, dict[str, str], str]:
    """pareto_front.csv, best_config_<trial>.toml per Pareto trial and the front's plots:
    (notes, figures, tables) for report.py to write, and the front as a terminal table."""
    from optuna import visualization as vis
    from optuna.trial import TrialState

    from nin_search.reports import plots

    names = _names(ostudy, spec)
    frame = front_frame(ostudy, spec)
    frame.to_csv(out / "pareto_front.csv", index=False)
    for old in out.glob("best_config_*.toml"):  # a trial no longer on the front
        old.unlink()
    by_number = {t.number: t for t in ostudy.best_trials}
    for n in frame["trial"] if "base" in spec else []:
        t = by_number[n]
        shown = ", ".join(
            f"{k} {v:,.0f}" if k in BUDGETS else f"{k} {v:.6g}"
            for k, v in zip(names, t.values, strict=True)
        )
        file = f"best_config_{n}.toml"
        (out / file).write_text(best_config(spec, t, file, f"Pareto trial {n}: {shown}"))
    notes = [f"Pareto front of {', '.join(names)}: {len(frame)} trials (pareto_front.csv)"]
    notes += budget_notes(ostudy, spec)  # [constraints] with several objectives too
    if "base" not in spec:
        notes.append("no best_config_*.toml: the study holds no settings; run `sweep` on it once")
    figures = {}
    try:
        figures["pareto_front"] = vis.plot_pareto_front(ostudy, target_names=names)
    except ValueError as e:  # 4+ objectives, or no complete trial
        notes.append(f"pareto_front: not drawn ({first_line(e, 200)})")
    acc = next((i for i, n in enumerate(names) if n in OBJECTIVES), 0)
    done = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    macs, measured, label = reference(spec)
    figures["accuracy_vs_macs"] = plots.accuracy_vs_macs(
        [(t.number, t.user_attrs.get("macs"), t.values[acc]) for t in done],
        set(frame["trial"]),
        names[acc],
        (macs, measured.get(names[acc]), label),
    )
    for name, make in (
        ("parallel_coordinate", vis.plot_parallel_coordinate),
        ("slice", vis.plot_slice),
    ):
        try:
            figures[name] = make(ostudy, target=lambda t: t.values[acc], target_name=names[acc])
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            notes.append(f"{name}: not drawn ({first_line(e, 200)})")
    text = _table(frame) if len(frame) else ""  # printed under the notes' first line
    return notes, figures, {"Pareto front": frame.to_html(index=False)}, text


def budget_notes(ostudy, spec: dict) -> list[str]:
    """A constrained study's report line: the samples rejected over budget."""
    if not spec.get("constraints"):
        return []
    over, n = over_budget(ostudy)
    limits = ", ".join(f"{k} <= {v:,.0f}" for k, v in spec["constraints"].items())
    return [f"budget {limits}: {over} of {n} samples over budget (rejected untrained)"]
