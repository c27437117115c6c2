"""Figures, statistics and HTML pages of plain data: plotly, pandas and scipy, no store."""
