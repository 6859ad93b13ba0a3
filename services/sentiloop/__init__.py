"""Sentiloop: sentiment analysis that improves itself from user feedback."""

__version__ = "0.1.0"
