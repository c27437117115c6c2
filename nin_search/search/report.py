"""Reports of a finished (or running) study, written to reports/<study>/ and its MLflow parent run.

    python -m nin_search report studies/ablate_head.toml
    python -m nin_search report nin-quick --storage sqlite:///mlruns/optuna.db

An ablation gets its summary table (summary.csv, summary.md, printed), the per-seed cells
(cells.csv) and plots: accuracy per arm with CIs, accuracy against params and MACs, mean val
curves with a band. A sweep gets Optuna's optimization history, intermediate values, parallel
coordinates, param importances and slice plots, the trials as trials.csv and the best
configuration as best_config.toml, ready for `train --config`. index.html shows it all.
"""

from __future__ import annotations

import html
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from nin_search.engine.errors import first_line
from nin_search.reports import plots, stats
from nin_search.reports.pages import ROOT, page, report_dir
from nin_search.search import arm_lr as tuning
from nin_search.search.cells import cell_frame
from nin_search.search.studies import best_config
from nin_search.tracking.store import setup_tracking


def _spec(ostudy: optuna.Study) -> dict:
    # a study from before nin_spec was recorded (or from elsewhere): plots and trials only
    return ostudy.user_attrs.get("nin_spec") or {"kind": "sweep", "objective": "value"}


def _fmt(table: pd.DataFrame) -> pd.DataFrame:
    """Readable numbers: accuracies to 4 places, p to 3 significant digits, sizes with commas."""
    out = table.copy().astype(object)
    for col in table.columns:
        if col in ("arm", "n", "diverged", "missing", "converged", "at_chance"):
            continue
        digits = {"lr": ".3g", "img_per_s": ",.0f", "params": ",", "macs": ","}
        fmt = ".3g" if "p_" in col else digits.get(col, ".4f")
        fmt = ".2f" if col in ("epoch_time_s", "peak_mem_mib") else fmt
        out[col] = ["" if v is None or pd.isna(v) else format(v, fmt) for v in table[col]]
    return out


def ablation_markdown(
    name: str, spec: dict, table: pd.DataFrame, lr_notes: list[str] | None = None
) -> str:
    finished = int(table["n"].sum() + table["diverged"].sum())
    cells = len(spec["arms"]) * len(spec["seeds"])
    lines = [
        f"# Ablation {name}",
        "",
        f"- metric: {spec['objective']} on the validation split, {finished} of {cells} cells"
        f" finished, seeds {spec['seeds']}",
        f"- baseline: {spec['baseline']}; delta = arm - baseline, paired by seed",
        f"- statistics: {stats.TEST}",
    ]
    if "p_holm" in table:
        lines.append(f"- {stats.HOLM} (Holm 1979; {len(table) - 1} comparisons)")
    if "p_wilcoxon" in table:
        lines.append(f"- {stats.WILCOXON}, where >= {stats.WILCOXON_MIN} pairs")
    if "test_mean" in table:
        also = [c for c in ("test_p_wilcoxon", "test_p_holm") if c in table]
        tests = "test_p_value: the paired t-test" + (
            f"; {' and '.join(also)} as above" * bool(also)
        )
        lines.append(
            "- test_*: accuracy on the test set (--final-eval), with the same paired statistics "
            f"({tests}); only reported, never used for tuning or choosing"
        )
    lines += [f"- {n}" for n in lr_notes or []]
    gain = f"{100 * stats.CONVERGED_GAIN:.1f}"
    lines.append(
        f"- last_gain: val accuracy gained over the last 10% of epochs (at least one), mean "
        f"over seeds; converged: last_gain < {gain} points and no seed at chance"
    )
    for row in table.itertuples():
        if row.at_chance:
            at = f" at lr {row.lr:.3g}" if pd.notna(row.lr) else ""
            lines.append(
                f"- {row.arm}: {row.at_chance} of {row.n} seeds ended at chance without having "
                f"learned (nothing learned{at}): its mean says nothing about the architecture"
            )
        if row.converged is False and row.last_gain >= stats.CONVERGED_GAIN:
            lines.append(
                f"- {row.arm} did not converge (it still gained {100 * row.last_gain:.2f} "
                f"points at the end): its verdict may reflect training speed"
            )
    return "\n".join(
        lines
        + [
            "",
            _fmt(table).to_markdown(
                index=False,
                disable_numparse=True,
                colalign=["left"] + ["right"] * (table.shape[1] - 1),
            ),
            "",
        ]
    )


def _write(out: Path, figures: dict, tables: dict[str, str], title: str, notes: list[str]):
    for name, fig in figures.items():  # plotly.min.js once beside them, for offline viewing
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory")
    blocks = [f"<p>{html.escape(n)}</p>" for n in notes]
    blocks += [f"<h2>{html.escape(k)}</h2>{v}" for k, v in tables.items()]
    blocks += [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures.values()]
    (out / "index.html").write_text(page(title, "\n".join(blocks), plotly=True))


def ablation_table(ostudy: optuna.Study) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(summary, cells, spec): one row per arm with its statistics against the baseline, one
    row per finished cell, and what the ablation file said."""
    spec = _spec(ostudy)
    cells = cell_frame(spec, ostudy)
    table = stats.compare(cells, spec["baseline"], tuning.arm_lrs(spec, ostudy.user_attrs))
    return table, cells, spec


def ablation_report(ostudy: optuna.Study, out: Path) -> tuple[pd.DataFrame, str, dict]:
    table, cells, spec = ablation_table(ostudy)
    cells.to_csv(out / "cells.csv", index=False)
    table.to_csv(out / "summary.csv", index=False)
    text = ablation_markdown(ostudy.study_name, spec, table, tuning.notes(spec, ostudy.user_attrs))
    (out / "summary.md").write_text(text)
    metric = spec["objective"]
    figures = {
        "accuracy": plots.arm_accuracy(table, cells, metric),
        "accuracy_vs_params": plots.accuracy_against(table, "params", metric),
        "accuracy_vs_macs": plots.accuracy_against(table, "macs", metric),
        "val_curves": plots.arm_curves(cells),
    }
    notes = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    _write(
        out,
        figures,
        {
            "summary": _fmt(table).to_html(index=False),
            "cells": cells.drop(columns="val_acc").astype(object).fillna("").to_html(index=False),
        }
        | kept_models(ostudy, out, best=None),
        f"Ablation {ostudy.study_name}",
        notes,
    )
    return table, text, figures


def sweep_report(ostudy: optuna.Study, out: Path) -> tuple[str, dict]:
    from optuna import visualization as vis

    spec = _spec(ostudy)
    ostudy.trials_dataframe().to_csv(out / "trials.csv", index=False)
    if len(ostudy.directions) > 1:  # a Pareto front, not a best trial (pareto.py)
        from nin_search.search.budgets import pareto_report

        notes, figures, tables, text = pareto_report(ostudy, spec, out)
        tables |= kept_models(ostudy, out, None)
        _write(out, figures, tables, f"Sweep {ostudy.study_name}", notes)
        shown = [notes[0], text, *notes[1:]] if text else notes  # the table under its heading
        return "\n".join(shown), figures
    figures, notes = {}, []
    makers = {
        "optimization_history": vis.plot_optimization_history,
        "intermediate_values": vis.plot_intermediate_values,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "param_importances": vis.plot_param_importances,
        "slice": vis.plot_slice,
    }
    for name, make in makers.items():
        try:
            figures[name] = make(ostudy)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few trials for it
            notes.append(f"{name}: not drawn ({first_line(e, 200)})")
    try:
        best = ostudy.best_trial
    except ValueError:
        best = None
    if best is not None and "base" not in spec:
        notes.insert(0, "no best_config.toml: the study holds no settings; run `sweep` on it once")
    elif best is not None:
        (out / "best_config.toml").write_text(
            best_config(
                spec, best, "best_config.toml", f"best trial {best.number}: value {best.value:.6g}"
            )
        )
        shown = ", ".join(f"{k}={v}" for k, v in best.params.items())
        notes.insert(
            0, f"best {spec['objective']} {best.value:.4f} (trial {best.number}: {shown})"
        )
    else:
        notes.insert(0, "no complete trial yet: no best configuration")
    from nin_search.search.budgets import budget_notes

    notes[1:1] = budget_notes(ostudy, spec)  # [constraints]: the samples over budget
    _write(out, figures, kept_models(ostudy, out, best), f"Sweep {ostudy.study_name}", notes)
    return "\n".join(notes), figures


def kept_models(ostudy: optuna.Study, out: Path, best) -> dict[str, str]:
    """{"kept models": html}: a row per trial whose model is kept (its URI and the command that
    evaluates it) and, for the best sweep trial, its val confusion matrix and gallery copied
    beside index.html. Empty when none is kept."""
    import shutil
    import tempfile

    from nin_search.tracking.models import ALIAS, live_models

    setup_tracking()
    try:
        live = {m.model_id: m.experiment_id for m in live_models(ostudy.study_name)}
    except mlflow.exceptions.MlflowException:
        return {}
    kept = [
        t for t in ostudy.get_trials(deepcopy=False) if t.user_attrs.get("mlflow_model_id") in live
    ]
    if not kept:
        return {}
    head = ""
    if best is not None and best.user_attrs.get("mlflow_model_id") in live:
        run = best.user_attrs["mlflow_run_id"]
        links = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("confusion_matrix.html", "predictions.html"):
                (out / f"best_{name}").unlink(missing_ok=True)  # an earlier best's
                try:
                    path = mlflow.artifacts.download_artifacts(
                        run_id=run, artifact_path=f"evaluation/val/{name}", dst_path=tmp
                    )
                except (mlflow.exceptions.MlflowException, OSError):
                    continue
                shutil.copy(path, out / f"best_{name}")
                links.append(f"<a href='best_{name}'>{name.split('.')[0].replace('_', ' ')}</a>")
        head = (
            f"<p>best trial {best.number} (models:/{html.escape(ostudy.study_name)}@{ALIAS} "
            f"once the sweep has ended): {', '.join(links) or 'no evaluation logged'} on the "
            "validation split</p>"
        )
    cells = [
        [
            str(t.number),
            ", ".join(f"{k}={v}" for k, v in t.params.items()),
            ", ".join(f"{v:.4f}" for v in t.values or []),
            f"models:/{t.user_attrs['mlflow_model_id']}",
            f"python -m nin_search evaluate {t.user_attrs.get('mlflow_run_id')}",
        ]
        for t in kept
    ]
    ui = "http://127.0.0.1:5000/#/experiments/{}/models/{}"  # where `nin_search ui` serves it
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td><a href='{ui.format(live[c[8:]], c[8:])}'>{c}</a></td>"
            if c.startswith("models:/")
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in cells
    )
    cols = "".join(f"<th>{c}</th>" for c in ("trial", "params", "value", "model", "evaluate"))
    note = "<p>model links open in the MLflow UI (<code>python -m nin_search ui</code>)</p>"
    return {"kept models": f"{head}{note}<table><tr>{cols}</tr>{rows}</table>"}


def _log(ostudy: optuna.Study, out: Path, figures: dict) -> str:
    """The report on the study's MLflow parent run (plots as self-contained figures)."""
    parent = ostudy.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        return "no MLflow parent run recorded on the study"
    setup_tracking()
    client = mlflow.MlflowClient()
    try:
        for path in sorted(out.iterdir()):
            if path.suffix != ".js" and (path.suffix != ".html" or path.name == "index.html"):
                client.log_artifact(parent, str(path), "report")
        for name, fig in figures.items():
            client.log_figure(parent, fig, f"report/{name}.html")
    except mlflow.exceptions.MlflowException as e:
        return f"not logged to MLflow ({first_line(e, 200)})"
    return f"logged to MLflow parent run {parent} under report/"


def report(ostudy: optuna.Study, root: Path = ROOT, quiet: bool = False) -> Path:
    """Write the study's report; print its summary and where it went."""
    out = report_dir(root, ostudy.study_name)
    out.mkdir(parents=True, exist_ok=True)
    if _spec(ostudy)["kind"] == "ablation":
        _, text, figures = ablation_report(ostudy, out)
    else:
        text, figures = sweep_report(ostudy, out)
    logged = _log(ostudy, out, figures)
    if not quiet:
        print(text)
    print(f"report: {out / 'index.html'}; {logged}")
    return out
