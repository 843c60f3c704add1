"""Fixtures of the review tests: a real SQLite database filled through the agent's store, and a config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.review.factory import VIEWER_ENV, fill_queue_db, viewer_hash, write_config


@pytest.fixture
def queue_env(tmp_path, datasets_root, monkeypatch):
    """Alarms and normal frames in ``agent.db``; the page's config points at it (and at tmp folders)."""
    db = tmp_path / "agent.db"
    ids = fill_queue_db(db, datasets_root, tmp_path / "media")
    cfg = write_config(tmp_path, f"sqlite:///{db}")
    monkeypatch.setenv("LINEWATCH_REVIEW_CONFIG", str(cfg))
    monkeypatch.setenv(VIEWER_ENV, viewer_hash())
    return SimpleNamespace(db=db, ids=ids, cfg=cfg, tmp=tmp_path)
