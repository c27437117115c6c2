"""Plotly figures, written as standalone HTML and logged to MLflow."""

from __future__ import annotations

import math
import textwrap

import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS as DEFAULT_COLORS
from plotly.subplots import make_subplots


def training_curves(history: list[dict], title: str = "") -> go.Figure:
    """Loss and accuracy per epoch, training and validation side by side."""
    epochs = [h["epoch"] for h in history]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for col, metric in ((1, "loss"), (2, "acc")):
        for split, dash in (("train", "solid"), ("val", "dash")):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[h[f"{split}_{metric}"] for h in history],
                    name=f"{split}_{metric}",
                    mode="lines+markers",
                    line={"dash": dash},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def lr_finder_curve(finding, title: str = "LR range test") -> go.Figure:
    """Raw, causal-EMA and zero-phase loss against lr on a log axis, the suggestions marked on
    the curve the rules read (lr_finder.smoothing), the recommended one (lr_finder.rule) larger.
    The y-axis ends a little above the starting loss (_loss_axis); a divergence above it is
    marked where it leaves the axis, its points kept in the traces (autoscale shows them)."""
    c = finding.curve
    fig = go.Figure()
    for i, run in enumerate(c.runs):  # each repeat's raw loss; c.losses is their median
        fig.add_trace(
            go.Scatter(
                x=c.lrs,
                y=run,
                name=f"repeat {i + 1}",
                mode="lines",
                line={"color": "gainsboro", "width": 1},
                legendgroup="repeats",
                showlegend=i == 0,
            )
        )
    raw = "median loss" if c.runs else "loss"
    fig.add_trace(
        go.Scatter(x=c.lrs, y=c.losses, name=raw, mode="lines", line={"color": "darkgray"})
    )
    for name, ys, key in (
        ("causal EMA (fastai, lags)", c.smoothed, "ema"),
        ("zero-phase (no lag)", finding.zero_phase, "zero-phase"),
    ):
        used = " - rules read this" if key == finding.smoothing else ""
        dash = "solid" if used else "dot"
        fig.add_trace(
            go.Scatter(x=c.lrs, y=ys, name=name + used, mode="lines", line={"dash": dash})
        )
    for name, (lr, loss) in finding.suggestion_points.items():
        big = name == finding.rule
        fig.add_trace(
            go.Scatter(
                x=[lr],
                y=[loss],
                name=f"{name} {lr:.2e}" + (" (recommended)" if big else ""),
                mode="markers",
                marker={"size": 16 if big else 10, "symbol": "diamond"},
            )
        )
    if finding.recommended_range:
        low, high = finding.recommended_range
        fig.add_vrect(
            x0=low,
            x1=high,
            fillcolor="green",
            opacity=0.08,
            line_width=0,
            annotation_text="sweep range",
            annotation_position="top left",
        )
    fig.update_xaxes(type="log", title_text="learning rate")
    fig.update_yaxes(title_text="training loss" if "val" not in title else "validation loss")
    bounds = _loss_axis(finding)
    if bounds:  # the traces keep every point (the autoscale button shows them); the axis does not
        low, high = bounds
        fig.update_yaxes(range=[low, high])
        raws = (c.losses, *c.runs)  # the repeats are cut to the median's length
        above = [(lr, v) for ys in raws for lr, v in zip(c.lrs, ys, strict=True) if v > high]
        if above:
            finite = [v for _, v in above if math.isfinite(v)]  # a diverged median is +inf
            peak = f"max {max(finite):.3g}" if finite else "not finite"
            lr = min(lr for lr, _ in above)
            text = f"loss leaves the axis at lr {lr:.3g} ({peak})"
            fig.add_trace(
                go.Scatter(
                    x=[lr],
                    y=[high],
                    name=text,
                    mode="markers",
                    marker={"symbol": "triangle-up", "size": 12, "color": "firebrick"},
                    cliponaxis=False,  # on the axis's edge: drawn whole
                    hovertemplate=text + "<extra></extra>",
                )
            )
    subtitle = f"lr_finder.rule = {finding.rule}, lr_finder.smoothing = {finding.smoothing}"
    fig.update_layout(
        title="<br>".join(textwrap.wrap(f"{title}: {finding.message}", 120))
        + f"<br><sup>{subtitle}</sup>",
        template="plotly_white",
    )
    return fig


AXIS_PAD = 0.1  # the y-axis reaches past the start and the minimum by 10% of the fall between


def _loss_axis(finding) -> tuple[float, float] | None:
    """lr_finder_curve's y-range: a little below the lowest point of every curve drawn, a little
    above the start (the highest raw loss of the first 10% of steps, where zero_phase caps).

    A divergence's raw loss reaches 100x the start; an axis that shows it flattens the whole
    descent, the part the rules read, into a line at the bottom (fastai and torch-lr-finder cut
    the last points instead). None when no loss at the start is finite: plotly's autorange."""
    c = finding.curve
    head = max(1, len(c.lrs) // 10)
    start = [v for ys in (c.losses, *c.runs) for v in ys[:head] if math.isfinite(v)]
    if not start:
        return None
    drawn = (c.losses, *c.runs, c.smoothed, finding.zero_phase)
    low = min(v for ys in drawn for v in ys if math.isfinite(v))
    marks = [loss for _, loss in finding.suggestion_points.values()]
    high = max(start + marks)  # every suggestion's marker stays on the figure
    pad = AXIS_PAD * max(high - low, 0.05 * abs(high), 1e-12)  # a flat curve still gets a band
    return low - pad, high + pad


def _errors(table, prefix: str = "") -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": (table[f"{prefix}ci_high"] - table[f"{prefix}mean"]).tolist(),
        "arrayminus": (table[f"{prefix}mean"] - table[f"{prefix}ci_low"]).tolist(),
    }


def arm_accuracy(table, cells, metric: str, title: str = "") -> go.Figure:
    """Mean per arm with its 95% CI, and every seed's value as a dot."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=table["arm"],
            y=table["mean"],
            error_y=_errors(table),
            mode="markers",
            marker={"size": 14, "symbol": "line-ew-open", "line": {"width": 3}},
            name="mean, 95% CI",
        )
    )
    done = cells[cells["state"] == "complete"]
    fig.add_trace(
        go.Scatter(
            x=done["arm"],
            y=done["value"],
            mode="markers",
            marker={"size": 7, "opacity": 0.6},
            text=[f"seed {s}" for s in done["seed"]],
            name="one seed",
        )
    )
    fig.update_yaxes(title_text=metric)
    fig.update_layout(title=title or f"{metric} per arm", template="plotly_white")
    return fig


def accuracy_against(table, x: str, metric: str, title: str = "") -> go.Figure:
    """Mean per arm (95% CI) against params or MACs, one labelled point per arm."""
    fig = go.Figure(
        go.Scatter(
            x=table[x].astype(float),
            y=table["mean"],
            error_y=_errors(table),
            mode="markers+text",
            text=table["arm"],
            textposition="top center",
            marker={"size": 11},
        )
    )
    fig.update_xaxes(type="log", title_text=x)
    fig.update_yaxes(title_text=metric)
    fig.update_layout(title=title or f"{metric} against {x}", template="plotly_white")
    return fig


def arm_curves(cells, title: str = "") -> go.Figure:
    """Mean val_acc per epoch for each arm, with a band of +-1 sd over seeds."""
    import numpy as np

    fig = go.Figure()
    for i, (arm, group) in enumerate(cells.groupby("arm", sort=False)):
        done = group[group["state"] == "complete"]  # as in the table: diverged runs left out
        curves = [c for c in done["val_acc"] if isinstance(c, list) and c]
        if not curves:
            continue
        n = max(map(len, curves))
        grid = np.full((len(curves), n), np.nan)
        for row, c in enumerate(curves):
            grid[row, : len(c)] = c
        mean = np.nanmean(grid, axis=0)
        sd = np.nan_to_num(np.nanstd(grid, axis=0, ddof=1) if len(curves) > 1 else 0 * mean)
        epochs = list(range(1, n + 1))
        color = DEFAULT_COLORS[i % len(DEFAULT_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=epochs + epochs[::-1],
                y=list(mean + sd) + list(mean - sd)[::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=mean,
                mode="lines+markers",
                line={"color": color},
                name=f"{arm} (n={len(curves)})",
            )
        )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="val_acc (mean +- 1 sd over seeds)")
    fig.update_layout(title=title or "validation accuracy per epoch", template="plotly_white")
    return fig


def confusion_matrix(counts: list[list[int]], classes, title: str = "") -> go.Figure:
    """Counts and row-normalised rates (each true class sums to 1) side by side."""
    names = list(classes)
    rates = [[c / max(1, sum(row)) for c in row] for row in counts]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("counts", "row-normalised"), horizontal_spacing=0.18
    )
    for col, (z, fmt) in enumerate(((counts, "%{z}"), (rates, "%{z:.2f}")), start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=names,
                y=names,
                colorscale="Blues",
                showscale=False,
                texttemplate=fmt,
                hovertemplate=f"true %{{y}}<br>predicted %{{x}}<br>{fmt}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="predicted", row=1, col=col)
        fig.update_yaxes(title_text="true", autorange="reversed", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=620, width=1300)
    return fig


def accuracy_vs_macs(points, front: set, metric: str, reference) -> go.Figure:
    """Every complete trial's (trial, macs, value) on a log MACs axis, the Pareto trials joined
    by a line, and the reference (macs, value or None, label): a star when its value is known,
    else a vertical line at its MACs."""
    fig = go.Figure()
    points = [p for p in points if p[1]]
    for on, name in ((False, "dominated"), (True, "Pareto front")):
        group = sorted((p for p in points if (p[0] in front) == on), key=lambda p: p[1])
        fig.add_trace(
            go.Scatter(
                x=[p[1] for p in group],
                y=[p[2] for p in group],
                text=[f"trial {p[0]}" for p in group],
                mode="lines+markers" if on else "markers",
                line={"shape": "hv"},
                marker={"size": 10 if on else 7, "color": "crimson" if on else "lightgray"},
                name=name,
            )
        )
    macs, value, label = reference
    if macs and value is not None:
        fig.add_trace(
            go.Scatter(
                x=[macs],
                y=[value],
                mode="markers+text",
                text=[label],
                textposition="top center",
                marker={"size": 16, "symbol": "star", "color": "black"},
                name=f"{label} ({macs:,} MACs)",
            )
        )
    elif macs:
        fig.add_vline(
            x=macs,
            line_dash="dash",
            annotation_text=f"{label}: {macs:,} MACs (accuracy not given)",
        )
    fig.update_xaxes(type="log", title_text="MACs per image (forward)")
    fig.update_yaxes(title_text=metric)
    fig.update_layout(title=f"{metric} against MACs", template="plotly_white")
    return fig
