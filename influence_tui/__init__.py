"""Influence: privacy-first local LLM inference for the terminal."""

__version__ = "0.1.0"
