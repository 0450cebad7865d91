"""A weighted list of reward functions, called safely: `RewardSet.score(rows)` -> each row's total.

A reward function is called in whichever of three shapes its signature asks for:
- keywords (a first parameter named `response`, or `**kwargs`): `response` plus those of the row's fields
  it names: `prompt` (the `Prompt` record), `ground_truth` (= `answer`), `question`, `messages`,
  `data_source`, `ability`, `index`, and every other column of the row under its own name;
- verl's `compute_score(data_source, solution_str, ground_truth, extra_info)` (it has `solution_str`);
- two positional arguments `(response, prompt)` (the previous convention).
It may be `async def` (a set's async calls for one step run concurrently). It returns a finite number, a
dict with a "score" entry, or None: "does not apply to this row". A row's total is the weighted sum of the
rewards that apply to it. The entry named `env` reads the environment's own reward of the row.

Anything else stops the run with one `RewardError` line naming the function and the row: a value that is
not a finite number (a string, NaN, inf, 10**400), an exception (even `SystemExit`), or a call still running
after `algorithm.reward_timeout` seconds. Scoring such a row as 0 instead would silently train the policy
against a bug in the reward.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appo.errors import UserError
from appo.prompts import Prompt

ENV_REWARD = "env"
# Metric names of the total that a reward's own name must not overwrite.
RESERVED_NAMES = frozenset({"mean", "init_mean", "accuracy"})


class RewardError(UserError):
    """A reward function failed, or cannot be used; the message names the function (and the row)."""


def row_fields(response: str, prompt: Prompt) -> dict[str, Any]:
    """Everything a keyword-style reward may ask for: the row's own columns, then the standard fields."""
    users = [m["content"] for m in prompt.messages if m.get("role") == "user"]
    return {**prompt.extra, "response": response, "prompt": prompt, "ground_truth": prompt.ground_truth,
            "answer": prompt.ground_truth, "question": users[-1] if users else "", "messages": prompt.messages,
            "data_source": prompt.data_source, "ability": prompt.ability, "index": prompt.index}


def _where(prompt: Prompt) -> str:
    return f"row index={prompt.index}, data_source={prompt.data_source!r}"


def _shape(fn: Callable) -> tuple[str, list[str], bool]:
    """('verl' | 'keywords' | 'positional', the parameter names it needs, whether it takes **kwargs)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the old convention
        return "positional", [], False
    names = [p.name for p in params]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if "solution_str" in names:
        return "verl", names, var_kw
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if var_kw or (params and names[0] == "response"):
        return "keywords", [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], var_kw
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params):
        return "positional", [], False
    return "keywords", names, var_kw


def _is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass
class Reward:
    """One entry of a reward list: `fn` (None for the environment's reward), its weight and metric name."""

    name: str
    fn: Callable | None
    weight: float = 1.0
    source: str = ""  # how the config named it (e.g. 'my_rewards:fmt'), for messages
    shape: str = field(init=False, default="env")
    params: list[str] = field(init=False, default_factory=list)
    var_kw: bool = field(init=False, default=False)
    is_async: bool = field(init=False, default=False)

    def __post_init__(self):
        if not isinstance(self.weight, numbers.Real) or not math.isfinite(self.weight):
            raise RewardError(f"reward '{self.name}': weight {self.weight!r} is not a finite number")
        if self.fn is not None:
            if not callable(self.fn):
                raise RewardError(f"reward '{self.name}': {self.fn!r} is not callable")
            self.shape, self.params, self.var_kw = _shape(self.fn)
            self.is_async = _is_async(self.fn)

    @property
    def label(self) -> str:
        return self.source if self.source and self.source != self.name else self.name

    def missing(self, fields: dict[str, Any]) -> list[str]:
        """Required parameters of a keyword-style function that the row does not provide."""
        if self.shape != "keywords":
            return []
        sig = inspect.signature(self.fn)
        return [n for n in self.params if n not in fields and sig.parameters[n].default is inspect.Parameter.empty]

    def call(self, response: str, prompt: Prompt) -> Any:
        """Call the function in its shape (the result may be awaitable for an async one)."""
        if self.shape == "verl":
            return self.fn(data_source=prompt.data_source, solution_str=response,
                           ground_truth=prompt.ground_truth, extra_info=dict(prompt.extra, index=prompt.index))
        if self.shape == "positional":
            return self.fn(response, prompt)
        fields = row_fields(response, prompt)
        if missing := self.missing(fields):
            raise RewardError(f"reward '{self.label}' needs argument(s) {', '.join(missing)}, which {_where(prompt)} "
                              f"does not have; the row has: {', '.join(sorted(fields))}")
        return self.fn(**(fields if self.var_kw else {n: fields[n] for n in self.params if n in fields}))


def as_score(value: Any, name: str, prompt: Prompt) -> float | None:
    """A reward's return value as a float (None: does not apply); anything else is a RewardError."""
    if isinstance(value, dict):
        if "score" not in value:
            raise RewardError(f"reward '{name}' returned a dict without a 'score' entry (keys: "
                              f"{', '.join(map(str, value)) or 'none'}) on {_where(prompt)}")
        value = value["score"]
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
        shown = f"{str(value)[:20]}... ({len(str(value))} digits)" if isinstance(value, int) else repr(value)
        raise RewardError(f"reward '{name}' returned {shown}, not a finite number, on {_where(prompt)}")
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise RewardError(f"reward '{name}' returned {shown} ({type(value).__name__}), not a number, on "
                      f"{_where(prompt)}; a reward returns a finite number, or None when it does not apply")


def _failure(name: str, prompt: Prompt, error: BaseException) -> RewardError:
    if isinstance(error, RewardError):
        return error
    if isinstance(error, SystemExit):
        return RewardError(f"reward '{name}' called exit({error.code}) on {_where(prompt)}; a reward must "
                           "return a value")
    if isinstance(error, asyncio.TimeoutError):
        return RewardError(f"reward '{name}' ran past its deadline on {_where(prompt)}")
    text = str(error).replace("\n", " ")
    return RewardError(f"reward '{name}' raised {type(error).__name__}{f': {text}' if text else ''} on "
                       f"{_where(prompt)}")


async def _await(value: Any, timeout: float | None) -> Any:
    return await asyncio.wait_for(value, timeout)


def _run_calls(reward: Reward, rows: Sequence[tuple[str, Prompt]], timeout: float | None) -> list[Any]:
    """`reward` on every row in a worker thread, each call with its deadline: a sync function one row at a
    time, an async one all rows at once. The thread is a daemon, so a call that never returns cannot keep
    the process alive after the run has stopped on it."""
    results: queue.Queue = queue.Queue()

    def one(i: int):
        response, prompt = rows[i]
        try:
            value = reward.call(response, prompt)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value, timeout))
            results.put((i, True, value))
        except BaseException as e:  # SystemExit included: a reward must not end the run
            results.put((i, False, e))

    async def all_async():
        async def task(i: int):
            response, prompt = rows[i]
            try:
                results.put((i, True, await asyncio.wait_for(reward.call(response, prompt), timeout)))
            except BaseException as e:
                results.put((i, False, e))

        await asyncio.gather(*(task(i) for i in range(len(rows))))

    def work():
        if reward.is_async:
            try:
                asyncio.run(all_async())
            except BaseException as e:  # the loop itself failed: report it on the first row
                results.put((0, False, e))
        else:
            for i in range(len(rows)):
                one(i)

    threading.Thread(target=work, name=f"reward-{reward.name}", daemon=True).start()
    out: list[Any] = [None] * len(rows)
    done: set[int] = set()
    # An async call has its own deadline inside the loop; the margin here only catches a function that
    # blocks the loop (a sync sleep inside `async def`).
    wait = None if timeout is None else timeout + (1.0 if reward.is_async else 0.0)
    while len(done) < len(rows):
        try:
            i, ok, value = results.get(timeout=wait)
        except queue.Empty:
            row = next(i for i in range(len(rows)) if i not in done)
            raise RewardError(f"reward '{reward.label}' did not return within {timeout:g} s on "
                              f"{_where(rows[row][1])} (raise algorithm.reward_timeout, or null for no "
                              "deadline)") from None
        if not ok:
            raise _failure(reward.label, rows[i][1], value)
        out[i] = as_score(value, reward.label, rows[i][1])
        done.add(i)
    return out


class RewardSet:
    """Weighted rewards. Calling it, `rewards(response, prompt)`, scores one row (the old reward shape);
    `score(rows)` scores many and keeps each function's values for `metrics()`."""

    def __init__(self, rewards: Sequence[Reward], timeout: float | None = None):
        if not rewards:
            raise RewardError("no reward function: set algorithm.reward_fn or algorithm.rewards")
        seen: set[str] = set()
        for r in rewards:
            if r.name in seen:
                raise RewardError(f"two rewards are named '{r.name}'; give one of them another `name` "
                                  "(algorithm.rewards[i].name)")
            if r.name in RESERVED_NAMES:
                raise RewardError(f"reward name '{r.name}' is taken by the total's metric reward/{r.name}; "
                                  "choose another (algorithm.rewards[i].name)")
            seen.add(r.name)
        self.rewards, self.timeout = list(rewards), timeout
        self.values: dict[str, list[float]] = {}

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def uses_env(self) -> bool:
        return any(r.fn is None for r in self.rewards)

    def check_row(self, prompt: Prompt) -> None:
        """Fail now (start-up) when a keyword-style function asks for a field this row does not have."""
        fields = row_fields("", prompt)
        for r in self.rewards:
            if r.fn is not None and (missing := r.missing(fields)):
                raise RewardError(f"reward '{r.label}' needs argument(s) {', '.join(missing)}, which the data "
                                  f"does not have ({_where(prompt)}); its fields: {', '.join(sorted(fields))}")

    def score(self, rows: Sequence[tuple[str, Prompt]], env_rewards: Sequence[float | None] | None = None,
              collect: bool = True) -> list[float]:
        """Each row's total: the weighted sum of the rewards that apply to it (at least one must). With
        `collect`, each function's values are kept for `metrics()`."""
        per_reward = []
        for r in self.rewards:
            if r.fn is None:
                values = [as_score(v, r.name, p) for v, (_, p) in
                          zip(env_rewards or [None] * len(rows), rows, strict=True)]
            else:
                values = _run_calls(r, rows, self.timeout)
            if collect:
                self.values.setdefault(r.name, []).extend(v for v in values if v is not None)
            per_reward.append(values)
        totals = []
        for i, (_, prompt) in enumerate(rows):
            applied = [(r.weight, vals[i]) for r, vals in zip(self.rewards, per_reward) if vals[i] is not None]
            if not applied:
                raise RewardError(f"no reward applies to {_where(prompt)} (every one of {', '.join(self.names)} "
                                  "returned None); add a reward for such rows to algorithm.rewards")
            totals.append(float(sum(w * v for w, v in applied)))
        return totals

    def __call__(self, response: str, prompt: Prompt, env_reward: float | None = None) -> float:
        return self.score([(response, prompt)], [env_reward], collect=False)[0]

    def metrics(self) -> dict[str, float]:
        """reward/<name>: each function's mean over the rows it applied to since the last call (only when
        there are several functions: one alone is reward/mean); resets the collected values."""
        values, self.values = self.values, {}
        if len(self.rewards) < 2:
            return {}
        return {f"reward/{name}": sum(v) / len(v) for name, v in values.items() if v}
