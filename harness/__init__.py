"""Evaluation harness for LLM trading policies on crypto covered calls."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("harness")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
