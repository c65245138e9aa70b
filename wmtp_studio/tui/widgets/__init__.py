"""Reusable widgets of the dashboard (charts, heatmaps, highlighted tokens)."""
