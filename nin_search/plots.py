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
            fig.add_trace(go.Scatter(x=epochs, y=[h[f"{split}_{metric}"] for h in history],
                                     name=f"{split}_{metric}", mode="lines+markers",
                                     line={"dash": dash}), row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    fig.update_layout(title=title, template="plotly_white")
    return fig
