"""Plotly figures, written as standalone HTML and logged to MLflow."""

from __future__ import annotations

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
    """Loss and smoothed loss against lr on a log axis, with the suggestions marked."""
    c = finding.curve
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=c.lrs, y=c.losses, name="loss", mode="lines", line={"color": "lightgray"})
    )
    fig.add_trace(go.Scatter(x=c.lrs, y=c.smoothed, name="smoothed loss", mode="lines"))
    for name, (lr, loss) in finding.suggestion_points.items():
        fig.add_trace(
            go.Scatter(
                x=[lr],
                y=[loss],
                name=f"{name} {lr:.2e}",
                mode="markers",
                marker={"size": 11, "symbol": "diamond"},
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
    fig.update_layout(title=f"{title}: {finding.message}", template="plotly_white")
    return fig


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
