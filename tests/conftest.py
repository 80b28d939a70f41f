"""Shared fixtures: the ns-3 namespace with our native models, loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ns():
    from emulation.native.build import load_native

    return load_native()


@pytest.fixture
def fresh_sim(ns):
    """An empty simulator before and after the test (one simulation at a time)."""
    ns.Simulator.Destroy()
    ns.RngSeedManager.SetSeed(1)
    ns.RngSeedManager.SetRun(1)
    ns.RngSeedManager.ResetNextStreamIndex()
    yield ns
    ns.Simulator.Destroy()
