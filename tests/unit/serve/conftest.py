"""The rollout tests' HF engine over the tiny model and the real python tool."""

from tests.unit.rollout.conftest import engine, python_tools  # noqa: F401 - fixtures
