"""WMTP Studio: train, evaluate and compare Weighted Multi-Token Prediction code models."""

__version__ = "0.1.0"
