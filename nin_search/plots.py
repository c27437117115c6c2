"""Plotly figures, written as standalone HTML and logged to MLflow."""

from __future__ import annotations

import plotly.graph_objects as go
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
