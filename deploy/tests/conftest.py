"""Every overlay rendered once per test session; tests that break a manifest get a copy."""

from __future__ import annotations

import copy

import pytest

from .manifests import OVERLAYS, Manifest, render_overlay


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    return {name: render_overlay(name) for name in OVERLAYS}


@pytest.fixture
def prod(rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """A private copy of the prod render, free to break in a test."""
    return copy.deepcopy(rendered["prod"])
