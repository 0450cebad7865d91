"""Environments: per-trajectory state behind a few tools (a database, a file system, a game).

An environment is a class (`tools.environment: pkg.mod:Class`, constructor arguments in
`tools.environment.args`). One instance lives for one trajectory:

    __init__(**args)          the config's arguments
    setup(**columns)          optional: the row's dataset columns (those its signature names, or all with **kw)
    <tool>(...) -> str        every public method other than the hooks below is a tool (or the class's
                              `tools` attribute lists them), typed and documented like a function tool
    reward() -> float | None  optional: a reward read from the final state (Trajectory.env_reward)
    fork() -> instance        optional: an independent copy in the same state (branches use it)
    close()                   optional: always called once for every instance that was created

Branches (APPO, ARPO) continue a parent's prefix, so they need the environment as it was after the parent's
first k calls: `EnvSession.branch(k)` forks the snapshot taken after call k when the class has `fork`, and
otherwise replays the parent's first k calls into a fresh instance set up from the same row (correct for a
deterministic environment; see docs/extending.md for what a non-deterministic one must do).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
from typing import Any

from appo.plugins import PluginError, load_object
from appo.tools.base import ToolResult
from appo.tools.plugin import as_result
from appo.tools.spec import ToolSpec, spec_from_callable

log = logging.getLogger(__name__)
HOOKS = ("setup", "reward", "fork", "close")


def env_columns(prompt: Any) -> dict:
    """The dataset columns of a prompt row an environment is set up from: its extra columns, plus the
    gold answer, data source and index (as `ground_truth`, `data_source`, `index`)."""
    if prompt is None:
        return {}
    if isinstance(prompt, dict):
        return dict(prompt)
    columns = dict(getattr(prompt, "extra", None) or {})
    for key in ("ground_truth", "data_source", "index"):
        if hasattr(prompt, key):
            columns.setdefault(key, getattr(prompt, key))
    return columns


class EnvironmentFactory:
    """An environment class with its arguments and tool specs, checked when built (start-up)."""

    def __init__(self, cls: Any, args: dict | None = None, where: str = "tools.environment"):
        if not inspect.isclass(cls):
            raise PluginError(f"{where}: {cls!r} is not a class; an environment is a class whose instance "
                              "lives for one trajectory")
        self.cls, self.args, self.where = cls, dict(args or {}), where
        names = getattr(cls, "tools", None)
        if names is None:
            names = [n for n, v in inspect.getmembers(cls, inspect.isfunction)
                     if not n.startswith("_") and n not in HOOKS]
        if not names:
            raise PluginError(f"{where}: {cls.__name__} has no public methods, so the model would have no tool")
        self.specs: dict[str, ToolSpec] = {}
        for name in names:
            fn = getattr(cls, name, None)
            if not inspect.isfunction(fn):
                raise PluginError(f"{where}: {cls.__name__}.{name} is not a method")
            self.specs[name] = spec_from_callable(fn, name, f"{where} ({cls.__name__}.{name})", method=True)
        self.can_fork = callable(getattr(cls, "fork", None))
        self._setup_params = _accepted(getattr(cls, "setup", None))

    def create(self, columns: dict) -> Any:
        """A new instance set up from `columns` (raises what the class raises)."""
        instance = self.cls(**self.args)
        setup = getattr(instance, "setup", None)
        if callable(setup):
            try:
                setup(**_select(columns, self._setup_params))
            except BaseException:
                _close(instance)
                raise
        return instance

    def session(self, columns: dict, on_open=None) -> EnvSession:
        return EnvSession(self, columns, on_open=on_open)

    def check(self, columns: dict) -> None:
        """Set up and close one instance from a real row at start-up, so a class that cannot be built or
        set up stops the run with one line instead of failing every rollout."""
        try:
            instance = self.create(columns)
        except Exception as e:
            raise PluginError(f"{self.where}: {self.cls.__name__} failed to set up from a data row "
                              f"({type(e).__name__}: {e})") from None
        _close(instance)


def _accepted(fn) -> set[str] | None:
    """The keyword names `fn` takes (None: any, it has **kwargs)."""
    if fn is None:
        return set()
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def _select(columns: dict, accepted: set[str] | None) -> dict:
    return dict(columns) if accepted is None else {k: v for k, v in columns.items() if k in accepted}


def _close(instance: Any) -> None:
    close = getattr(instance, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # a failing close must not stop the others
            log.exception("environment close() failed")


class EnvSession:
    """The environment of one trajectory: its live instance, the calls it ran, and (for classes with `fork`)
    a snapshot after set-up and after each call, which branches fork from. Every instance it creates is
    closed exactly once by `close()`. Calls of one session never overlap (a row waits for its result);
    sessions of different trajectories run in parallel in the tool pool."""

    def __init__(self, factory: EnvironmentFactory, columns: dict, *, on_open=None,
                 instance: Any = None, history: list | None = None, snapshots: list | None = None,
                 error: str | None = None):
        self.factory, self.columns = factory, columns
        self.history: list[tuple[str, dict]] = list(history or [])
        self.snapshots: list[Any] = list(snapshots or [])   # state after 0..len(history) calls (fork only)
        self.error = error
        self._owned: list[Any] = []
        self._lock = threading.Lock()
        self._on_open = on_open
        self.instance = instance
        if error is not None:
            return
        if instance is None:
            try:
                self.instance = self._own(factory.create(columns))
                self._replay()
            except Exception as e:
                self.error = f"Error: the environment failed to set up ({type(e).__name__}: {e})"
                log.warning("%s: %s", factory.cls.__name__, self.error)
        else:
            self._own(instance)
        if self.instance is not None and factory.can_fork and len(self.snapshots) <= len(self.history):
            self._snapshot()

    def _own(self, instance: Any) -> Any:
        self._owned.append(instance)
        if self._on_open is not None:
            self._on_open(1)
        return instance

    def _replay(self) -> None:
        for name, kwargs in self.history:
            # a call that raised for the parent raises again: its effect on the state is replayed as it was
            with contextlib.suppress(Exception):
                getattr(self.instance, name)(**kwargs)

    def _snapshot(self) -> None:
        self.snapshots.append(self._own(self.instance.fork()))

    @property
    def calls(self) -> int:
        return len(self.history)

    def call(self, name: str, payload: str) -> ToolResult:
        """Run tool `name` on this trajectory's instance; an exception becomes an error result."""
        spec = self.factory.specs[name]
        if self.error is not None:
            return ToolResult(self.error, ok=False, meta={"env_error": True})
        try:
            kwargs = spec.parse(payload)
        except ValueError as e:
            return ToolResult(str(e), ok=False)
        with self._lock:
            self.history.append((name, kwargs))
            try:
                result = as_result(getattr(self.instance, name)(**kwargs))
            except Exception as e:
                result = ToolResult(f"Error: {name} failed: {type(e).__name__}: {e}", ok=False,
                                    meta={"env_error": True})
            if self.factory.can_fork:
                self._snapshot()
        result.meta["env_calls"] = len(self.history)
        return result

    def branch(self, k: int) -> EnvSession:
        """A new session in this one's state after its first `k` calls: a fork of snapshot k, or a replay."""
        history = self.history[:k]
        if self.error is None and self.factory.can_fork and k < len(self.snapshots):
            try:
                copy = self.snapshots[k].fork()
            except Exception as e:
                return EnvSession(self.factory, self.columns, on_open=self._on_open, history=history,
                                  error=f"Error: the environment's fork() failed ({type(e).__name__}: {e})")
            return EnvSession(self.factory, self.columns, on_open=self._on_open, instance=copy, history=history,
                              snapshots=self.snapshots[:k + 1])
        return EnvSession(self.factory, self.columns, on_open=self._on_open, history=history)

    def finish(self) -> float | None:
        """The trajectory is done: its reward (`reward`), then its live instance is closed (snapshots stay
        for branches until `close`)."""
        try:
            return self.reward()
        finally:
            live, self.instance = self.instance, None
            if live is not None and any(x is live for x in self._owned):
                self._owned = [x for x in self._owned if x is not live]
                _close(live)
                if self._on_open is not None:
                    self._on_open(-1)

    def reward(self) -> float | None:
        """The environment's reward for the final state; None when it has none or failed to set up. A reward
        that raises counts as none (logged); one that returns a non-number stops the run (PluginError)."""
        fn = getattr(self.instance, "reward", None)
        if self.error is not None or not callable(fn):
            return None
        try:
            value = fn()
        except Exception:
            log.exception("%s.reward() failed", self.factory.cls.__name__)
            return None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PluginError(f"{self.factory.where}: {self.factory.cls.__name__}.reward() returned {value!r}; "
                              "it must return a finite number or None")
        return float(value)

    def close(self) -> None:
        """Close every instance this session created (snapshots it borrowed from its parent stay open)."""
        owned, self._owned = self._owned, []
        for instance in owned:
            _close(instance)
            if self._on_open is not None:
                self._on_open(-1)


def load_environment(spec: str, args: dict | None, where: str = "tools.environment") -> EnvironmentFactory:
    return EnvironmentFactory(load_object(spec, where), args, f"{where} ({spec})")
