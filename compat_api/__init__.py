"""compat-api: a rerank API server that speaks every common rerank dialect."""

__version__ = "0.1.0"
