"""Fixtures for evaluation tests: the real sandboxed python tool."""

from __future__ import annotations

import pytest

from appo.config import ToolsConfig


@pytest.fixture(scope="module")
def python_tools():
    from appo.tools import build_tools

    runner = build_tools(ToolsConfig(enabled=["python"], timeout=10.0))
    yield runner
    runner.close()
