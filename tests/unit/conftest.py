"""Unit tests run without any sidecar; settings come only from what each test sets."""

from __future__ import annotations

import os

import pytest

_SETTINGS_ALIASES = ("APP_PORT", "APP_ID")


@pytest.fixture(autouse=True)
def _clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WORKER_* (or APP_*) variable from the outer shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("WORKER_") or name.upper() in _SETTINGS_ALIASES:
            monkeypatch.delenv(name, raising=False)
