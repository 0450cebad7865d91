"""Environments in the rollout: one instance per trajectory, set-up and close paired, errors as tool text,
and branches (APPO, ARPO) that continue in their parent's state at the split point, by replaying the
parent's calls or by the environment's own fork hook."""

from __future__ import annotations

import copy
import itertools
import types

import pytest

from appo.rollout.sampling import sample_groups
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, ToolLoop
from appo.tools.environment import EnvironmentFactory
from appo.tools.registry import ToolRunner

from .conftest import ScriptedEngine, make_cfg

LEDGER: dict[str, int] = {}


class Table:
    """A table the agent inserts rows into."""

    def __init__(self, fail_setup: bool = False):
        self.fail_setup = fail_setup
        LEDGER["created"] = LEDGER.get("created", 0) + 1

    def setup(self, table: str) -> None:
        if self.fail_setup or table == "broken":
            raise RuntimeError("no such table")
        self.name, self.data = table, []

    def insert(self, value: str) -> str:
        """Insert one row.

        Args:
            value: the row's text
        """
        if value == "boom":
            raise ValueError("constraint failed")
        self.data.append(value)
        return f"inserted {value} into {self.name}"

    def update(self, index: int, value: str) -> str:
        """Replace the row at `index`."""
        self.data[index] = value
        return "updated"

    def rows(self) -> str:
        """All rows of the table, in insertion order."""
        return ",".join(self.data) or "(empty)"

    def reward(self) -> float:
        return float(len(self.data))

    def close(self) -> None:
        LEDGER["closed"] = LEDGER.get("closed", 0) + 1


class ForkingTable(Table):
    """A table that copies itself for branches instead of being replayed."""

    def fork(self) -> ForkingTable:
        LEDGER["forks"] = LEDGER.get("forks", 0) + 1
        twin = copy.copy(self)
        twin.data = list(self.data)
        LEDGER["created"] = LEDGER.get("created", 0) + 1
        return twin


@pytest.fixture(autouse=True)
def _ledger():
    LEDGER.clear()
    yield
    assert LEDGER.get("created", 0) == LEDGER.get("closed", 0), f"set-up and close do not pair up: {LEDGER}"


def _runner(cls):
    return ToolRunner({}, max_workers=4, environment=EnvironmentFactory(cls))


def _response(text):
    return text.split("<|im_start|>assistant\n")[-1]


_serial = itertools.count()


def _inserter(calls: int):
    """The policy: `calls` inserts, each with a value never used before (so a parent's later inserts differ
    from a branch's), then it lists the rows and answers."""
    def script(text, req):
        resp = _response(text)
        if resp.count("<insert>") < calls:
            return f"<think>more</think><insert>v{next(_serial)}</insert>"
        if "<rows>" not in resp:
            return "<rows></rows>"
        return "<answer>\\boxed{done}</answer><|im_end|>"
    return script


def _prompt(tok, table="t"):
    chat = tok.apply_chat_template([{"role": "user", "content": "Fill the table."}], add_generation_prompt=True,
                                   tokenize=False)
    return types.SimpleNamespace(prompt_ids=tok.encode(chat, add_special_tokens=False), index=0, extra={"table": table},
                                 ground_truth="done", data_source="t")


def _inserted(traj):
    return [e["payload"] for e in traj.tool_log if e["tool"] == "insert"]


def _listed(traj, tok):
    """What the trajectory's <rows> call returned: the environment's state as that trajectory saw it."""
    entry = next(e for e in traj.tool_log if e["tool"] == "rows")
    text = tok.decode(traj.token_ids[entry["start"]:entry["end"]])
    return text.split("<result>\n")[1].split("\n</result>")[0].split(",")


@pytest.mark.parametrize("cls", [Table, ForkingTable], ids=["replay", "fork"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_branch_split_after_the_kth_call_sees_exactly_the_parents_first_k_inserts(tiny_tokenizer, cls, k):
    tok = tiny_tokenizer
    with _runner(cls) as tools:
        loop = ToolLoop(ScriptedEngine(tok, _inserter(3)), tools, RolloutLoopSettings(max_response_length=400,
                                                                                      call_limit=10))
        parent = loop.add(LoopStart.fresh(_prompt(tok).prompt_ids, seed=1, row=_prompt(tok))).traj
        while loop.active:
            loop.step()
        assert _listed(parent, tok) == _inserted(parent) and len(_inserted(parent)) == 3
        split = [e for e in parent.tool_log if e["tool"] == "insert"][k - 1]["end"] if k else 0
        branch = parent.prefix(split)
        branch.kind = "branch"
        loop.add(LoopStart(branch, seed=2, parent=parent))
        while loop.active:
            loop.step()
        loop.release()
    mine = _inserted(branch)
    assert mine[:k] == _inserted(parent)[:k] and not set(mine[k:]) & set(_inserted(parent))
    assert _listed(branch, tok) == mine  # the parent's first k rows, then its own: none of the parent's later ones
    assert parent.env_reward == 3.0 and branch.env_reward == 3.0
    # a snapshot after set-up and after each of the parent's 4 calls, the branch's fork, one per branch call
    assert LEDGER.get("forks", 0) == (5 + 1 + (4 - k) if cls is ForkingTable else 0)


class MidwayEngine(ScriptedEngine):
    """High entropy on the turns written between the first and the last insert, so APPO splits there."""

    def generate(self, requests):
        out = super().generate(requests)
        for req, res in zip(requests, out):
            done = _response(self.tokenizer.decode(req.prompt_ids, skip_special_tokens=False)).count("<insert>")
            res.entropies = [5.0 if 0 < done < 3 else 0.01 for _ in res.token_ids]
        return out


@pytest.mark.parametrize("cls", [Table, ForkingTable], ids=["replay", "fork"])
def test_appo_branches_continue_the_parents_environment_state(tiny_tokenizer, cls):
    tok = tiny_tokenizer
    cfg = make_cfg(**{"rollout.n": 6, "rollout.initial_rollouts": 2, "rollout.max_response_length": 300,
                      "rollout.appo.fv_source": "none", "tools.call_limit": 8, "algorithm.name": "appo"})
    with _runner(cls) as tools:
        (group,), metrics = sample_groups(MidwayEngine(tok, _inserter(3)), tools, [_prompt(tok)], cfg)
    assert len(group.branches) == 4 and metrics["rollout/env_sessions"] == 6
    checked = 0
    for branch in group.branches:
        parent = group.inits[branch.parent]
        k = sum(e["tool"] == "insert" and e["end"] <= branch.split_pos + 1 for e in parent.tool_log)
        assert _inserted(branch)[:k] == _inserted(parent)[:k]
        assert _listed(branch, tok) == _inserted(branch)
        checked += 0 < k < 3
    assert checked, "no branch split between two inserts: the test would not see a wrong state"


@pytest.mark.parametrize("cls", [Table, ForkingTable], ids=["replay", "fork"])
def test_arpo_branches_continue_the_parents_environment_state(tiny_tokenizer, cls):
    tok = tiny_tokenizer
    cfg = make_cfg(**{"rollout.n": 4, "rollout.initial_rollouts": 2, "rollout.max_response_length": 300,
                      "tools.call_limit": 8, "algorithm.name": "arpo", "rollout.arpo.beam_size": 2})
    with _runner(cls) as tools:
        (group,), _ = sample_groups(ScriptedEngine(tok, _inserter(3)), tools, [_prompt(tok)], cfg, draw=lambda: 0.0)
    assert group.branches
    for branch in group.branches:
        assert _listed(branch, tok) == _inserted(branch)
        assert branch.tool_log[-1].get("env_calls", 0) > 0


def test_environment_errors_become_tool_text_and_are_counted(tiny_tokenizer):
    tok = tiny_tokenizer

    def script(text, req):
        resp = _response(text)
        if "<insert>" not in resp:
            return "<insert>boom</insert>"
        if resp.count("<result>") == 1:
            return '<update>{"index": "first", "value": 3}</update>'
        return "<answer>\\boxed{x}</answer><|im_end|>"

    cfg = make_cfg(**{"rollout.n": 2, "rollout.max_response_length": 300, "algorithm.name": "grpo"})
    with _runner(Table) as tools:
        (group,), metrics = sample_groups(ScriptedEngine(tok, script), tools, [_prompt(tok)], cfg)
        (broken,), broken_metrics = sample_groups(ScriptedEngine(tok, script), tools, [_prompt(tok, "broken")], cfg)
    for traj in group.rows:
        text = traj.response_text(tok)
        assert "Error: insert failed: ValueError: constraint failed" in text
        assert "Error: update: argument 'index' must be integer" in text  # a malformed call is answered, not run
        assert traj.finish_reason in ("eos", "answer")  # the step went on to the end
    assert metrics["rollout/env_errors"] == 2
    assert all("failed to set up (RuntimeError: no such table)" in t.response_text(tok) for t in broken.rows)
    assert broken_metrics["rollout/env_errors"] >= 2 and all(t.env_reward is None for t in broken.rows)
