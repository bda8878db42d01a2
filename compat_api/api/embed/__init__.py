"""The embedding feature: one module per dialect (OpenAI-shaped, the original embedding template)."""
