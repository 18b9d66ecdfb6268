"""Fixtures for raysel.models tests: offline hub, a private RAYSEL_CACHE."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("raysel-cache"))


@pytest.fixture(autouse=True)
def _offline_private_cache(monkeypatch, models_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RAYSEL_CACHE", models_cache)
