"""Large answers rendered off the event loop a vector at a time: the same JSON as one call."""

from __future__ import annotations

import json

import numpy as np

from compat_api.api.rendering import render


def test_vectors_render_as_the_json_of_their_values() -> None:
    rng = np.random.default_rng(0)
    per_input = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 5)]
    assert json.loads(render(per_input)) == [a.tolist() for a in per_input]
    nested = [[[1.0, 2.5], [3.0, -4.0]], [[0.0, 1e-30]]]
    assert json.loads(render(nested)) == nested
    assert json.loads(render([])) == [] and json.loads(render([[]])) == [[]]
    assert b" " not in render(per_input), "compact"


def test_objects_render_with_their_vectors() -> None:
    answer = {"object": "list", "data": [{"object": "embedding", "embedding": [0.5, -1.0], "index": 0}],
              "model": "m\u00e9", "usage": {"prompt_tokens": 3, "total_tokens": 3}}  # fmt: skip
    assert json.loads(render(answer)) == answer
    arrays = {"vectors": np.eye(3, dtype=np.float32)}
    assert json.loads(render(arrays)) == {"vectors": np.eye(3).tolist()}
