"""One text, one vector: every embedding dialect answers the same vector for the same text
(OpenAI floats and base64, cl100k token arrays, the original template, Cohere v1 and v2, TEI's
/embed by text and by the model's own ids, and the per-model TEI base URL)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from compat_api.core.tokens import ENCODING

TEXT = "function compute is alibaba cloud serverless computing service"


def cl100k(text: str) -> list[int]:
    import tiktoken

    return list(tiktoken.get_encoding(ENCODING).encode_ordinary(text))


def model_ids(client: TestClient) -> list[int]:
    return [t["id"] for t in client.post("/tokenize", json={"inputs": TEXT}).json()[0]]


ROUTES: dict[str, Callable[[TestClient], Any]] = {
    "openai float": lambda c: c.post("/v1/embeddings", json={"input": TEXT}).json()["data"][0]["embedding"],
    "openai base64": lambda c: np.frombuffer(base64.b64decode(c.post(
        "/embeddings", json={"input": [TEXT], "encoding_format": "base64"}).json()["data"][0]["embedding"]), "<f4"),
    "openai tokens": lambda c: c.post("/v1/embeddings", json={"input": cl100k(TEXT)}).json()["data"][0]["embedding"],
    "original template": lambda c: c.post("/embedding", json={"input": TEXT}).json()["data"][0]["embedding"],
    "cohere v1": lambda c: c.post("/v1/embed", json={"texts": [TEXT]}).json()["embeddings"][0],
    "cohere /embed": lambda c: c.post("/embed", json={"texts": [TEXT]}).json()["embeddings"][0],
    "cohere v2": lambda c: c.post("/v2/embed", json={"texts": [TEXT], "input_type": "search_document"}
                                  ).json()["embeddings"]["float"][0],
    "tei text": lambda c: c.post("/embed", json={"inputs": TEXT}).json()[0],
    "tei ids": lambda c: c.post("/embed", json={"inputs": [model_ids(c)]}).json()[0],
    "tei per model": lambda c: c.post("/tei/tiny-bge-m3/embed", json={"inputs": [TEXT]}).json()[0],
    "tei per model, openai": lambda c: c.post("/tei/tiny-bge-m3/v1/embeddings", json={"input": TEXT}
                                              ).json()["data"][0]["embedding"],
}  # fmt: skip


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_dialect_gives_the_same_vector(stack_client: TestClient, route: str) -> None:
    reference = np.asarray(ROUTES["openai float"](stack_client), dtype=np.float32)
    got = np.asarray(ROUTES[route](stack_client), dtype=np.float32)
    assert got.shape == reference.shape == (32,)
    assert np.abs(got - reference).max() <= 1e-6
