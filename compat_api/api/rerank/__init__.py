"""The rerank feature: one module per dialect (original, Cohere / Jina, TEI) and the shared `/rerank` route."""
