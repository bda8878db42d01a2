"""A model directory's fingerprint changes with any file the model is loaded from."""

from __future__ import annotations

import json
from pathlib import Path

from compat_api.core.fingerprint import fingerprint


def test_a_sentence_transformers_module_change_is_a_new_version(tmp_path: Path) -> None:
    """Switching 1_Pooling/config.json from mean to CLS pooling changes every vector: the watcher
    must see a new version."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "1_Pooling").mkdir()
    pooling = tmp_path / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    before = fingerprint(tmp_path)
    pooling.write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert fingerprint(tmp_path) != before


def test_hidden_entries_do_not_change_it(tmp_path: Path) -> None:
    """Download bookkeeping (`.cache/`) and editor or upload temporaries are not the model."""
    (tmp_path / "config.json").write_text("{}")
    before = fingerprint(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.json").write_text("{}")
    (tmp_path / ".config.json.swp").write_text("x")
    assert fingerprint(tmp_path) == before
