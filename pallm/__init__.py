"""PALLM pipeline: paralinguistics-aware speech datasets and training."""

__version__ = "0.1.0"
