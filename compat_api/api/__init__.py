"""HTTP layer: the app factory, one module per rerank dialect, and the error map."""
