"""The `eqx-bigbird` command line: `convert`, `train`, `fill-mask` and `embed`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
