"""The asynchronous tool loop on vLLM (rollout/stream_loop.py) against vLLM round by round: the same
trajectories (tool turns, APPO branches), outputs that do not depend on how long tools take, and no
barrier: a row waiting for its tool holds no other row, and a prompt's APPO branches run while another
prompt's initial row still waits.

Model: the 10M tiny model (fp32) with a bigram nudge toward `<python>...</python>` applied as a vLLM
logits processor (benchmarks/bench_agent_loop.py's; the nudge of test_kv_reuse's ToolHappyLM), so that
rows call the tool often.
Tolerances as in test_kv_reuse: token ids equal, log-probs and entropies within 1e-4. Both paths draw the
same per-request seeds; they differ in which requests share an engine step (float sums in the last bits).

Needs the optional vllm extra (a separate venv on CPU: see README "vLLM"); skips without it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.models import build_tiny, load_tokenizer  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.sampling import sample_groups  # noqa: E402
from appo.rollout.tool_loop import run_tool_loop  # noqa: E402
from appo.rollout.vllm import VLLMEngine  # noqa: E402
from appo.tools.base import ToolResult  # noqa: E402
from appo.tools.registry import ToolRunner  # noqa: E402

from .conftest import make_cfg  # noqa: E402
from .test_kv_reuse import SlowEcho, _assert_same, _prompts, _settings, _starts  # noqa: E402

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_agent_loop.py"


def _tool_nudge():
    """benchmarks/bench_agent_loop.py's logits processor (the benchmark runs the same nudge)."""
    spec = importlib.util.spec_from_file_location("bench_agent_loop", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tool_nudge


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = build_tiny(tmp_path_factory.mktemp("stream") / "tiny10m", size="10m")
    tok = load_tokenizer(str(path))
    return VLLMEngine(str(path), tok, dtype="float32", max_model_len=512, enforce_eager=True,
                      logits_processors=[_tool_nudge()(tok, "python")])


@pytest.fixture()
def rounds(engine):
    """Switch `engine` to round-by-round for one call: `with rounds(): ...`."""
    class Rounds:
        def __enter__(self):
            engine.supports_streaming = False

        def __exit__(self, *exc):
            engine.supports_streaming = True

    return Rounds


class GatedEcho:
    """Like SlowEcho with no pause, except that its first call blocks until `gate` is set (or `limit`
    seconds pass, so that a loop with a round barrier ends instead of hanging; generous, because the other
    rows must finish meanwhile, which took 100 s on the 2-core machine shared by eight engineers)."""
    name = "python"

    def __init__(self, limit: float = 900.0):
        self.gate = threading.Event()
        self.limit = limit
        self.calls = 0
        self.opened: bool | None = None
        self.lock = threading.Lock()

    def __call__(self, call):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.opened = self.gate.wait(self.limit)
        return ToolResult(f"len={len(call.payload)}", ok=True)


def _gated_row(trajs):
    """The row that made the gated call: the one whose call took longest (the runner times every call)."""
    return max(trajs, key=lambda t: max((e["seconds"] for e in t.tool_log), default=0.0))


def test_stream_returns_what_generate_returns(engine):
    tok = engine.tokenizer
    prompts = [p.prompt_ids for p in _prompts(tok, 3)]
    reqs = [GenRequest(p, 16, seed=i, stop=["</python>"], logprobs=2) for i, p in enumerate(prompts)]
    reqs += [GenRequest(prompts[0], 0, logprobs=3), GenRequest(prompts[1], 12, temperature=0)]
    expected = engine.generate(reqs)
    stream = engine.open_stream()
    for i, req in enumerate(reqs):
        stream.add(i, req)
    got = {}
    while len(stream):
        got.update(stream.step())
    assert len(stream) == 0 and sorted(got) == list(range(len(reqs)))
    for i, want in enumerate(expected):
        assert got[i].token_ids == want.token_ids
        assert (got[i].finish_reason, got[i].stop_str) == (want.finish_reason, want.stop_str)
        assert max((abs(a - b) for a, b in zip(got[i].logprobs, want.logprobs)), default=0.0) < 1e-4
        assert (got[i].top_logprobs is None) == (want.top_logprobs is None)
    with pytest.raises(ValueError, match="empty"):
        stream.add(99, GenRequest([], 3))


def test_tool_turns_match_round_by_round(engine, rounds, python_tools):
    tok = engine.tokenizer
    old_stats, new_stats = {}, {}
    with rounds():
        old = run_tool_loop(engine, python_tools, _starts(tok), _settings(), old_stats)
    new = run_tool_loop(engine, python_tools, _starts(tok), _settings(), new_stats)
    _assert_same(old, new)
    assert sum(len(t.tool_log) for t in new) >= 5 and sum(len(t.tool_log) >= 2 for t in new) >= 2
    assert old_stats["tool_calls"] == new_stats["tool_calls"]
    assert old_stats["rounds"] == new_stats["rounds"]


def test_appo_groups_match_round_by_round(engine, rounds, python_tools):
    tok = engine.tokenizer
    cfg = make_cfg(**{"rollout.n": 6, "rollout.initial_rollouts": 3, "rollout.max_response_length": 96,
                      "rollout.gen_batch_size": 5, "rollout.appo.fv_source": "none",
                      "rollout.appo.entropy_source": "topk", "tools.call_limit": 3})
    prompts = _prompts(tok, 3)
    with rounds():
        old_groups, _ = sample_groups(engine, python_tools, prompts, cfg)
    new_groups, _ = sample_groups(engine, python_tools, prompts, cfg)
    for a, b in zip(old_groups, new_groups):
        _assert_same(a.inits, b.inits)
        _assert_same(a.branches, b.branches)
        assert [t.split_pos for t in a.branches] == [t.split_pos for t in b.branches]
    branches = [t for g in new_groups for t in g.branches]
    assert len(branches) == 9 and all(t.parent is not None for t in branches)
    assert any(t.tool_log and t.split_pos + 1 < t.tool_log[-1]["start"] for t in branches)  # a call after the split


def test_outputs_do_not_depend_on_how_long_tools_take(engine):
    tok = engine.tokenizer
    runs = []
    for seed, pause in ((0, 0.0), (1, 0.3), (2, 0.3)):
        with ToolRunner({"python": SlowEcho(seed, pause)}, max_workers=8) as tools:
            runs.append(run_tool_loop(engine, tools, _starts(tok, k=2), _settings(gen_batch_size=3)))
    assert sum(len(t.tool_log) for t in runs[0]) >= 4
    for other in runs[1:]:
        _assert_same(runs[0], other)


def test_a_row_waiting_for_its_tool_holds_no_other_row(engine, rounds):
    """The first tool call blocks until every other row has finished: only a loop without a round barrier
    gets there (round by round, the gate times out and the others are still running)."""
    tok = engine.tokenizer
    starts = _starts(tok, k=2, per=3)
    gated = GatedEcho()
    finished = []

    def done(traj):
        finished.append(traj)
        if len(finished) == len(starts) - 1:
            gated.gate.set()

    with ToolRunner({"python": gated}, max_workers=8) as tools:
        trajs = run_tool_loop(engine, tools, starts, _settings(gen_batch_size=6), on_done=done)
    assert gated.opened is True
    assert finished[-1] is _gated_row(trajs)  # the gated row finished last
    assert sum(len(t.tool_log) for t in trajs) >= 4

    gated = GatedEcho(limit=5.0)  # the same workload round by round: the barrier holds everyone
    finished.clear()
    with rounds(), ToolRunner({"python": gated}, max_workers=8) as tools:
        run_tool_loop(engine, tools, _starts(tok, k=2, per=3), _settings(gen_batch_size=6), on_done=done)
    assert gated.opened is False


def test_appo_branches_start_while_another_prompt_still_waits(engine):
    """The first tool call blocks until a branch row has finished: its prompt's initial rows cannot be done,
    so the other prompts must have branched out and finished a branch meanwhile."""
    tok = engine.tokenizer
    cfg = make_cfg(**{"rollout.n": 4, "rollout.initial_rollouts": 2, "rollout.max_response_length": 64,
                      "rollout.gen_batch_size": 8, "rollout.appo.fv_source": "none",
                      "rollout.appo.entropy_source": "topk", "tools.call_limit": 2})
    gated = GatedEcho()
    order = []

    def done(traj):
        order.append(traj)
        if traj.kind == "branch":
            gated.gate.set()

    with ToolRunner({"python": gated}, max_workers=8) as tools:
        groups, _ = sample_groups(engine, tools, _prompts(tok, 3), cfg, on_done=done)
    assert gated.opened is True
    gated_group = _gated_row([t for grp in groups for t in grp.inits]).group
    first_branch = next(i for i, t in enumerate(order) if t.kind == "branch")
    last_init = max(i for i, t in enumerate(order) if t.kind == "init" and t.group == gated_group)
    assert first_branch < last_init
