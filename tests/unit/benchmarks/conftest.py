"""The benchmark scripts are not a package: their tests load each one from its file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare():
    """benchmarks/compare_algorithms.py"""
    return _load("compare_algorithms")


@pytest.fixture(scope="module")
def power():
    """benchmarks/study_power.py"""
    return _load("study_power")
