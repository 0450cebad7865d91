"""The multi-turn tool loop: one state machine per trajectory, run for a whole batch, token-in/token-out.

Each round generates for every live row until a tool's closing tag (`</python>`, `</search>`: one stop
string per enabled tool), `</answer>` (with `stop_at_answer`: the row ends there), EOS or the response
budget. A row that stopped on a closing tag has its call
parsed from its *current turn* only (the text generated since the last tool result), the calls of all
rows run in parallel through the ToolRunner, and each result is spliced in as
` <result>\\n{text}\\n</result>` (tokenised without special tokens, the protocol's tags inside `text`
escaped) with generated=0 and 0.0 log-prob and entropy records, so that every per-token array stays
aligned with the response tokens. Tool results count toward the response budget and are cut at it.

That is the tag format. How calls look is the ToolFormat's business (`appo.formats`, `tools.format`): with
`chat_template` there are no stop strings; a turn that ends at EOS is read for calls in the template's syntax
(several per turn; malformed ones answered with an error result and counted in `bad_calls`), they run
together, and what is appended is the template's rendering of their tool messages plus the next generation
prompt, so a row is exactly the template's rendering of its conversation.

Decisions the reference leaves implicit:
- Call limit: counted over the calls in the response only, so a branch starts at the calls of its
  copied prefix. At the limit `on_limit` says what happens: 'stop' ends the row (finish_reason
  'call_limit'); 'result' splices an error result that says so and lets the model go on (the call is
  not executed and not counted); 'eos' appends an EOS record with generated=0 (never trained as if
  sampled) and ends the row.
- Per-tool limits (`tools.python.call_limit`, `tools.search.call_limit`, the reference eval's budgets of 5
  and 10) count that tool's calls the same way and act like the total limit.
- A generation call that uses `max_tokens_per_call` without reaching a tool tag ends the row ('length'),
  as in the reference eval, where such a step has no call to answer.
- Empty payload (or a closing tag with no opening tag in the current turn): the reference ends the row
  silently, leaving a dangling call. Here it counts as a call that fails: an error result tells the model
  how to call the tool, and the row continues.

Engines with sessions (the HF engine with `rollout.kv_reuse`) keep each row's KV cache: after a tool
result only the result is prefilled, a branch or fork starts from its parent's cache, and `run` batches
continuously: a row that stops for a tool call leaves the batch, its call runs in the tool runner's
pool while the others decode, and it rejoins REJOIN_AFTER_STEPS decode steps later (waiting for the result
only if the tool is slower); freed slots go to the next rows. Which rows share a step therefore depends
on token counts only, never on how fast a tool or the machine is, so outputs are reproducible. Engines
that stream requests (vLLM with `rollout.vllm_async`) run every row through its own turns with no round
barrier (`appo.rollout.stream_loop`); other engines get one `generate` call per round for all live rows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from appo.formats import ParsedCall, build_format
from appo.formats.tags import EMPTY_TEXT  # noqa: F401  (the loop's message for an empty call, as before)
from appo.rollout.engine import Engine, GenRequest
from appo.rollout.trajectory import Trajectory
from appo.seeding import derive_seed
from appo.tools.base import ToolCall, ToolResult

LIMIT_TEXT = "Error: the tool call limit ({limit}) is reached; no more tool calls. Give your final answer now."
TOOL_LIMIT_TEXT = ("Error: the {tool} call limit ({limit}) is reached; you may not call {tool} again. Use "
                   "another tool or give your final answer now.")
ON_LIMIT = ("stop", "result", "eos")
ANSWER_STOP = "</answer>"
# What a row's due calls are marked with when its turn ended at EOS / end-of-turn (tools.format=chat_template).
END_OF_TURN = "<end of turn>"
# Decode steps a row sits out for its tool call before it rejoins (its result is waited for if not ready):
# long enough that a sandboxed call usually overlaps other rows' decoding, short enough to keep slots busy.
REJOIN_AFTER_STEPS = 2


class _ResumeFirst:
    """Rows waiting for a slot in the batch: rows that hold a KV cache (back from a tool, branches) go before
    rows yet to start. Served first come, first served instead, every row of a call starts before the first
    one resumes, and all their caches are held at once: memory grows with the rows a call runs (an
    evaluation chunk of hundreds), not with the batch."""

    def __init__(self):
        self.resumed: deque[LoopRow] = deque()
        self.fresh: deque[LoopRow] = deque()

    def append(self, row: LoopRow) -> None:
        (self.resumed if row.kv is not None else self.fresh).append(row)

    def popleft(self) -> LoopRow:
        return (self.resumed or self.fresh).popleft()

    def __len__(self) -> int:
        return len(self.resumed) + len(self.fresh)


@dataclass
class RolloutLoopSettings:
    max_response_length: int                 # response budget in tokens, tool results included
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens_per_call: int | None = None   # per generation call (between tool results); None: no cap
    call_limit: int = 3                      # calls of all tools per response
    tool_call_limits: dict[str, int] = field(default_factory=dict)   # per tool, on top of call_limit
    on_limit: str = "stop"
    stop_at_answer: bool = False             # end the row right after its first ANSWER_STOP
    top_logprobs: int = 0                    # top-k log-probs requested per generated token
    gen_batch_size: int = 64                 # rows per engine call
    tool_format: str = "tags"                # tools.format: tags | chat_template (appo.formats)
    chat_template: str | None = None         # tools.chat_template: a template appo ships, a file, None: the tokenizer's

    def __post_init__(self):
        if self.on_limit not in ON_LIMIT:
            raise ValueError(f"on_limit={self.on_limit!r} is not valid; choose one of: {', '.join(ON_LIMIT)}")

    @classmethod
    def from_config(cls, rollout_cfg, tools_cfg, top_logprobs: int = 0) -> RolloutLoopSettings:
        return cls(max_response_length=rollout_cfg.max_response_length, temperature=rollout_cfg.temperature,
                   top_p=rollout_cfg.top_p, top_k=rollout_cfg.top_k,
                   repetition_penalty=rollout_cfg.repetition_penalty,
                   max_tokens_per_call=rollout_cfg.max_tokens_per_call, call_limit=tools_cfg.call_limit,
                   tool_call_limits=tool_call_limits(tools_cfg), on_limit=tools_cfg.on_limit,
                   stop_at_answer=rollout_cfg.stop_at_answer, top_logprobs=top_logprobs,
                   gen_batch_size=rollout_cfg.gen_batch_size, tool_format=getattr(tools_cfg, "format", "tags"),
                   chat_template=getattr(tools_cfg, "chat_template", None))


def tool_call_limits(tools_cfg) -> dict[str, int]:
    """The per-tool limits that are set (`tools.<name>.call_limit`), by tool name."""
    limits = {name: getattr(getattr(tools_cfg, name, None), "call_limit", None) for name in tools_cfg.enabled}
    return {name: limit for name, limit in limits.items() if limit is not None}


@dataclass
class LoopStart:
    """Where a trajectory starts: an empty response (a fresh rollout), or a branch's copied token prefix,
    which the loop continues exactly as if the policy had just generated it."""
    trajectory: Trajectory
    seed: int | None = None
    kv: Any = None          # the engine's cache of a prefix of prompt + response (a parent's, from KeptCaches);
    #                         the loop takes it over when the start is added
    top_logprobs: int | None = None  # top-k log-probs per generated token; None: the loop's setting
    row: Any = None         # the prompt (or a dict of its columns) an environment is set up from
    parent: Trajectory | None = None  # a branch's parent in the same loop: its environment is continued


    @classmethod
    def fresh(cls, prompt_ids: list[int], *, group: int = 0, seed: int | None = None, kind: str = "init",
              meta: dict | None = None, keep_top_logprobs: bool = False, row: Any = None) -> LoopStart:
        traj = Trajectory(prompt_ids=list(prompt_ids), group=group, kind=kind, meta=dict(meta or {}),
                          top_logprobs=[] if keep_top_logprobs else None)
        return cls(traj, seed, row=row)


@dataclass
class LoopRow:
    """The loop's state for one trajectory."""
    traj: Trajectory
    seed: int | None
    turn_start: int = 0          # response position where the current turn began (after the last result)
    round_start: int = 0         # response position where this round's generation began
    rounds: int = 0
    pending_stop: str | None = None
    done: bool = False
    kv: Any = None               # engine cache of the ids fed so far (sessions only; None while in the batch)
    fed: int = 0                 # ids of prompt + response whose KV this row (or its parent) has computed
    joined: bool = False         # admitted to the engine at least once
    reported: bool = False
    top_logprobs: int = 0        # top-k log-probs requested per generated token
    env: Any = None              # the trajectory's EnvSession (runners with an environment)

    def finish(self, reason: str) -> None:
        self.traj.finish_reason = reason
        self.done = True


@dataclass
class _Item:
    """One call of a turn: a ToolCall to run, or the result it gets at once (an error, a refusal)."""
    parsed: ParsedCall
    call: ToolCall | None = None
    result: ToolResult | None = None
    refused: bool = False
    own: bool = False                # the loop's own message: the only result text not escaped


@dataclass
class _Turn:
    """The calls a row's turn ended with (one with tags, one or several with a chat template), whose results
    are appended together once all have run."""
    row: LoopRow
    items: list[_Item] = field(default_factory=list)

    @property
    def calls(self) -> list[ToolCall]:
        return [item.call for item in self.items if item.call is not None]

    def fill(self, results: list[ToolResult]) -> None:
        todo = iter(results)
        for item in self.items:
            if item.call is not None:
                item.result = next(todo)


@dataclass
class _Waiting:
    row: LoopRow
    turn: _Turn
    future: Future
    ready_at: int


def _all_of(futures: list[Future]) -> Future:
    """A future of the list of `futures`' results, done when the last of them is."""
    out: Future = Future()
    if not futures:
        out.set_result([])
        return out
    left, lock = [len(futures)], threading.Lock()

    def one_done(_):
        with lock:  # the callbacks run on the tool pool's threads
            left[0] -= 1
            last = left[0] == 0
        if last:
            out.set_result([f.result() for f in futures])

    for f in futures:
        f.add_done_callback(one_done)
    return out


class KeptCaches:
    """KV caches of finished rows kept for branches that continue their prefixes (APPO): fill it by passing
    it as `keep` to the initial rollouts' loop, give each branch start `kv=kept.get(parent_traj)`, then
    `clear()` it so the caches no branch uses are freed (the branches' starts hold the rest until they
    join the batch). Empty with engines that have no sessions."""

    def __init__(self):
        self._by_id: dict[int, tuple[Trajectory, Any]] = {}

    def put(self, traj: Trajectory, kv) -> None:
        if kv is not None:
            self._by_id[id(traj)] = (traj, kv)

    def get(self, traj: Trajectory):
        entry = self._by_id.get(id(traj))
        return entry[1] if entry is not None and entry[0] is traj else None

    def discard(self, traj: Trajectory) -> None:
        self._by_id.pop(id(traj), None)

    def clear(self) -> None:
        self._by_id.clear()

    @property
    def nbytes(self) -> int:
        return sum(kv.nbytes for _, kv in self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


class ToolLoop:
    """Rows are added with `add`, advanced one round at a time with `step` (strategies such as ARPO act
    between rounds), or to completion with `run`."""

    def __init__(self, engine: Engine, tools, settings: RolloutLoopSettings, stats: dict | None = None, *,
                 keep: KeptCaches | None = None, on_done: Callable[[Trajectory], None] | None = None):
        """`keep`: store the caches of finished rows there (for branches); `on_done(traj)`: called once per
        row as it finishes (progress bars)."""
        self.engine = engine
        self.tools = tools
        self.settings = settings
        self.tokenizer = engine.tokenizer
        self.tool_names = tuple(tools.names if tools is not None else ())
        self.format = build_format(settings.tool_format, self.tokenizer, _specs(tools), settings.chat_template)
        self.stops = list(self.format.stop_strings)
        self.calls_at_eos = self.format.name != "tags"  # chat templates: a turn is read for calls at its EOS
        self.engine_stops = self.stops + ([ANSWER_STOP] if settings.stop_at_answer else [])
        self.eos_ids = set(getattr(engine, "eos_ids", None) or {self.tokenizer.eos_token_id})
        self.rows: list[LoopRow] = []
        self.stats = stats if stats is not None else {}
        self.keep = keep
        self.on_done = on_done
        self.sessions = bool(getattr(engine, "supports_sessions", False))
        self._queue: list[_Turn] = []
        self._kv_bytes = 0           # parked caches (rows outside the batch), for the peak-memory stat
        self._arrivals: deque[LoopRow] | None = None  # rows added while `run` batches continuously
        self.environment = getattr(tools, "environment", None)
        self._envs: dict[int, tuple[Trajectory, Any]] = {}  # every row's EnvSession, until `release`

    # ------------------------------------------------------------------------------------ rows

    def add(self, start: LoopStart) -> LoopRow:
        """Add a row; allowed at any time, also from `on_done` while `run` is going (APPO adds a prompt's
        branches as soon as its initial rollouts are done)."""
        traj = start.trajectory
        traj.tool_format = self.format.name  # what rewards read of it (Trajectory.reward_text) depends on it
        top = self.settings.top_logprobs if start.top_logprobs is None else start.top_logprobs
        if traj.top_logprobs is None and top > 0:
            traj.top_logprobs = [{} for _ in traj.token_ids]
        row = LoopRow(traj, start.seed, turn_start=max((e["end"] for e in traj.tool_log), default=0),
                      top_logprobs=top)
        row.round_start = len(traj)
        # A branch's prefix was computed by its parent: all of it but the last id (whose logits it needs).
        # Any other prefix (a forced opening) is new to the model.
        row.fed = len(traj.prompt_ids) + len(traj) - 1 if len(traj) and traj.kind == "branch" else 0
        if self.sessions and start.kv is not None:
            row.kv = start.kv.prefix(row.fed)
            self._park(row.kv)
        start.kv = None
        if self.environment is not None:
            row.env = self._open_env(start)
        self._resume(row)
        self.rows.append(row)
        self._settle(row)
        if self._arrivals is not None and not row.done:
            self._arrivals.append(row)
        return row

    @property
    def active(self) -> list[LoopRow]:
        return [r for r in self.rows if not r.done]

    def _resume(self, row: LoopRow) -> None:
        """Classify a continued prefix: already finished, or ending in a turn whose calls are due (a closing
        tag; with a chat template, an EOS after calls: a branch split at the end of a turn that made calls)."""
        traj, budget = row.traj, self.settings.max_response_length
        if traj.token_ids and traj.token_ids[-1] in self.eos_ids:
            if self.calls_at_eos and len(traj) > row.turn_start and len(traj) < budget \
                    and self.format.calls_due(self._turn_text(row), None, True):
                row.pending_stop = END_OF_TURN
            else:
                row.finish("eos")
        elif len(traj) >= budget:
            row.finish("length")
        elif len(traj) > row.turn_start:
            turn = self._turn_text(row)
            if self.settings.stop_at_answer and ANSWER_STOP in turn:
                row.finish("answer")
                return
            if self.format.calls_due(turn, None, False):
                row.pending_stop = next((s for s in self.stops if s in turn), END_OF_TURN)

    # ---------------------------------------------------------------------------------- rounds

    def run(self) -> None:
        try:
            if self.sessions:
                self._run_continuous()
            elif getattr(self.engine, "supports_streaming", False):
                from appo.rollout.stream_loop import run_streamed  # it builds on this module

                run_streamed(self)
            while self.active:
                self.step()
        finally:
            self.release()

    # ---------------------------------------------------------------------------- environments

    def _open_env(self, start: LoopStart):
        """The row's environment: its parent's after the calls of the copied prefix (`EnvSession.branch`:
        a fork or a replay), or a fresh one set up from the start's row."""
        traj = start.trajectory
        calls = max((e.get("env_calls", 0) for e in traj.tool_log), default=0)
        parent = self._envs.get(id(start.parent)) if start.parent is not None else None
        if parent is not None and parent[0] is start.parent:
            session = parent[1].branch(calls)
        else:
            from appo.tools.environment import env_columns

            session = self.environment.session(env_columns(start.row))
            if calls:
                raise ValueError("a start whose prefix holds environment calls needs its parent trajectory "
                                 "(LoopStart.parent) in the same loop")
        self._count("env_sessions", 1)
        if session.error is not None:
            self._count("env_errors", 1)
        self._envs[id(traj)] = (traj, session)
        return session

    def release(self) -> None:
        """Close every environment instance this loop opened (live ones, snapshots, replays): called at the
        end of `run`; strategies that drive `step` themselves call it when their last row is done."""
        envs, self._envs = self._envs, {}
        for _, session in envs.values():
            session.close()

    def step(self) -> list[LoopRow]:
        """One round: due calls of continued prefixes, one generation for every live row, then the tool
        calls it produced. Returns the rows that generated in this round."""
        for row in self.active:
            if row.pending_stop is not None:
                stop, row.pending_stop = row.pending_stop, None
                self._queue_turn(row, stop)
        self._run_queued()
        rows = self.active
        if not rows:
            return []
        if self.sessions:
            outputs = self._generate_in_session(rows)
        else:
            t0 = time.perf_counter()
            requests = [self._request(r) for r in rows]
            results = []
            for i in range(0, len(requests), self.settings.gen_batch_size):
                results += self.engine.generate(requests[i:i + self.settings.gen_batch_size])
            outputs = [(res, None) for res in results]
            self._count("generate_seconds", time.perf_counter() - t0)
        self._count("rounds", 1)
        for row, (res, kv) in zip(rows, outputs):
            stop = self._absorb(row, res, kv)
            if stop is not None:
                self._queue_turn(row, stop)
        self._run_queued()
        for row in self.rows:
            self._settle(row)
        return rows

    def _request(self, row: LoopRow) -> GenRequest:
        """The next segment of `row`, with its seed per row and round; also counts what the engine must
        prefill for it, by phase (a fresh row's prompt, a branch's start, a turn after a tool result)."""
        settings = self.settings
        ids = row.traj.prompt_ids + row.traj.token_ids
        phase = "tool" if row.joined else "branch" if row.fed else "initial"
        row.joined = True
        cached = row.kv.length if row.kv is not None else 0
        self._count(f"prefill_tokens/{phase}", len(ids) - min(cached, len(ids) - 1))
        self._count(f"new_tokens/{phase}", len(ids) - min(row.fed, len(ids) - 1))
        per_call = settings.max_tokens_per_call or settings.max_response_length
        return GenRequest(prompt_ids=ids, max_new_tokens=min(settings.max_response_length - len(row.traj), per_call),
                          temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                          repetition_penalty=settings.repetition_penalty, stop=list(self.engine_stops),
                          logprobs=row.top_logprobs,
                          seed=None if row.seed is None else derive_seed(row.seed, row.rounds))

    def _absorb(self, row: LoopRow, res, kv) -> str | None:
        """Append a generated segment; returns the closing tag it stopped on (END_OF_TURN: a chat-template
        turn that ended at EOS with calls), if calls are now due."""
        budget = self.settings.max_response_length
        row.fed = len(row.traj.prompt_ids) + len(row.traj) + len(res.token_ids) - 1
        row.round_start = len(row.traj)
        row.rounds += 1
        row.kv = kv
        self._park(kv)
        row.traj.append(res.token_ids, generated=1, logprobs=res.logprobs, entropies=res.entropies,
                        top_logprobs=res.top_logprobs)
        self._count("generated_tokens", len(res.token_ids))
        if res.finish_reason == "stop" and res.stop_str in self.stops:
            return res.stop_str
        if (res.finish_reason == "eos" and self.calls_at_eos and len(row.traj) < budget
                and self.format.calls_due(self._turn_text(row), None, True)):
            return END_OF_TURN
        if res.finish_reason == "stop" and res.stop_str == ANSWER_STOP and self.settings.stop_at_answer:
            row.finish("answer")
        elif res.finish_reason == "eos":
            row.finish("eos")
        elif len(row.traj) >= budget or len(res.token_ids) >= (self.settings.max_tokens_per_call or budget):
            row.finish("length")
        else:
            raise RuntimeError(f"engine returned finish_reason={res.finish_reason!r} "
                               f"(stop_str={res.stop_str!r}) before the budget was used")
        return None

    def _settle(self, row: LoopRow) -> None:
        """A finished row hands its cache to `keep` (or frees it at once) and is reported once."""
        if not row.done or row.reported:
            return
        row.reported = True
        if row.env is not None:  # the final state's reward, read before its instance is closed
            row.traj.env_reward = row.env.finish()
        if row.kv is not None:
            self._park(row.kv, -1)
            if self.keep is not None:
                self.keep.put(row.traj, row.kv)
            row.kv = None
        if self.on_done is not None:
            self.on_done(row.traj)

    def _park(self, kv, sign: int = 1) -> None:
        if kv is not None:
            self._kv_bytes += sign * kv.nbytes
            self.stats["peak_kv_bytes"] = max(self.stats.get("peak_kv_bytes", 0),
                                              self._kv_bytes + (self.keep.nbytes if self.keep is not None else 0))

    def _admit(self, session, row: LoopRow) -> None:
        session.add(row, self._request(row), row.kv)
        self._park(row.kv, -1)
        row.kv = None

    def _session_step(self, session) -> list:
        t0 = time.perf_counter()
        shared = session.shared_tokens
        done = session.step()
        self._count("generate_seconds", time.perf_counter() - t0)
        if session.shared_tokens > shared:  # fresh rows of one prompt prefilled once (their first request)
            self._count("prefill_tokens/initial", shared - session.shared_tokens)
            self._count("shared_prefill_tokens", session.shared_tokens - shared)
        peak = self._kv_bytes + session.kv_bytes + (self.keep.nbytes if self.keep is not None else 0)
        self.stats["peak_kv_bytes"] = max(self.stats.get("peak_kv_bytes", 0), peak)
        return done

    def _generate_in_session(self, rows: list[LoopRow]) -> list:
        """One round through a session: every row generates one segment; slots refill as rows finish."""
        session = self.engine.open_session()
        todo, out = deque(rows), {}
        while todo or len(session):
            while todo and len(session) < self.settings.gen_batch_size:
                self._admit(session, todo.popleft())
            for row, res, kv in self._session_step(session):
                out[id(row)] = (res, kv)
        return [out[id(r)] for r in rows]

    def _run_continuous(self) -> None:
        """Every row to completion, batched continuously (see the module docstring)."""
        session = self.engine.open_session()
        ready = _ResumeFirst()
        waiting: deque[_Waiting] = deque()
        clock = 0
        self._arrivals = deque(self.active)

        def after(row: LoopRow, stop: str | None) -> None:
            self._dispatch(row, stop, ready, lambda turn: waiting.append(
                _Waiting(row, turn, self._submit_turn(turn), clock + REJOIN_AFTER_STEPS)))

        while True:
            self._drain_arrivals(after)
            if not (ready or waiting or len(session)):
                break
            if not ready and not len(session):
                clock = max(clock, waiting[0].ready_at)  # nothing to decode: the next result is due now
            while waiting and waiting[0].ready_at <= clock:
                w = waiting.popleft()
                t0 = time.perf_counter()
                results = w.future.result()
                self._count("tool_seconds", time.perf_counter() - t0)
                self._count("tool_calls", len(results))
                w.turn.fill(results)
                self._splice_turn(w.turn)
                after(w.row, None)
            while ready and len(session) < self.settings.gen_batch_size:
                self._admit(session, ready.popleft())
            if not len(session):
                continue
            open_rows = len(session) + len(waiting) + len(ready.resumed)  # rows holding a KV cache
            self.stats["peak_open_rows"] = max(self.stats.get("peak_open_rows", 0), open_rows)
            for row, res, kv in self._session_step(session):
                after(row, self._absorb(row, res, kv))
            clock += 1
        self._arrivals = None
        self._count("rounds", max((r.rounds for r in self.rows), default=0))

    def _drain_arrivals(self, after: Callable[[LoopRow, str | None], None]) -> None:
        """Hand each row added so far (by `on_done` callbacks, too), in order, with its due closing tag."""
        while self._arrivals:
            row = self._arrivals.popleft()
            stop, row.pending_stop = row.pending_stop, None
            after(row, stop)

    def _dispatch(self, row: LoopRow, stop: str | None, ready: deque | _ResumeFirst,
                  start_turn: Callable[[_Turn], None]) -> None:
        """After a segment that ended on `stop` (or a spliced result: None), in the continuous and streamed
        loops: start the row's due tool calls, or report the finished row, or queue it for its next segment."""
        turn = self._turn_for(row, stop) if stop is not None else None
        if turn is not None and turn.calls:
            start_turn(turn)
        elif turn is not None:  # nothing to run (errors, refusals): the results go in at once
            self._splice_turn(turn)
            self._dispatch(row, None, ready, start_turn)
        elif row.done:
            self._settle(row)
        else:
            ready.append(row)

    def _submit_turn(self, turn: _Turn) -> Future:
        """Start every call of a turn; the future's result is the list of their ToolResults."""
        return _all_of([self._submit(call) for call in turn.calls])

    def _submit(self, call: ToolCall) -> Future:
        submit = getattr(self.tools, "submit", None)
        if submit is not None:
            return submit(call)
        future: Future = Future()
        future.set_result(self.tools.run([call])[0])
        return future

    # ------------------------------------------------------------------------------- tool calls

    def _turn_text(self, row: LoopRow) -> str:
        return self.tokenizer.decode(row.traj.token_ids[row.turn_start:], skip_special_tokens=False)

    def _queue_turn(self, row: LoopRow, stop: str) -> None:
        turn = self._turn_for(row, stop)
        if turn is not None:
            self._queue.append(turn)

    def _turn_for(self, row: LoopRow, stop: str) -> _Turn | None:
        """Read the calls of a turn that ended on `stop` (END_OF_TURN: at EOS), in order: each becomes a
        ToolCall to run, or an error result at once (empty, malformed, unknown tool, bad arguments; counted in
        `empty_calls` / `bad_calls`), or a refusal at the call limit. None when the row ends at the limit
        instead (`on_limit` stop or eos, with no call of the turn accepted)."""
        traj, settings = row.traj, self.settings
        turn = _Turn(row)
        this_turn: dict[str, int] = {}
        for parsed in self.format.parse_calls(self._turn_text(row), None if stop == END_OF_TURN else stop):
            limit = self._limit_reached(traj, parsed.tool, this_turn.get(parsed.tool, 0))
            if limit is not None:
                self._count("limit_hits", 1)
                if settings.on_limit != "result" and not turn.items:
                    if settings.on_limit == "eos" and len(traj) < settings.max_response_length \
                            and traj.token_ids[-1] not in self.eos_ids:
                        traj.append([min(self.eos_ids)], generated=0)
                    row.finish("call_limit")
                    return None
                turn.items.append(_Item(parsed, result=ToolResult(limit, ok=False), refused=True, own=True))
                continue
            traj.tool_calls += 1
            this_turn[parsed.tool] = this_turn.get(parsed.tool, 0) + 1
            if parsed.error is not None:
                if parsed.kind == "empty":
                    self._count("empty_calls", 1)
                else:
                    self._count("bad_calls", 1)
                    self._count(f"bad_calls/{parsed.kind}", 1)
                turn.items.append(_Item(parsed, result=ToolResult(parsed.error, ok=False), own=True))
                continue
            history = tuple(e["payload"] for e in traj.tool_log if e["tool"] == parsed.tool and e["ok"])
            reasoning = self.tokenizer.decode(traj.token_ids, skip_special_tokens=True)
            turn.items.append(_Item(parsed, ToolCall(tool=parsed.tool, payload=parsed.payload, history=history,
                                                     reasoning=reasoning, env=row.env)))
        if not turn.items:  # a continued turn whose calls were not calls after all
            row.finish("eos")
            return None
        return turn

    def _limit_reached(self, traj: Trajectory, tool: str, in_turn: int = 0) -> str | None:
        """The message for the model when this call is over the total or the tool's own limit (`in_turn`:
        the tool's calls accepted earlier in the same turn), else None."""
        settings = self.settings
        if traj.tool_calls >= settings.call_limit:
            return LIMIT_TEXT.format(limit=settings.call_limit)
        own = settings.tool_call_limits.get(tool)
        if own is not None and in_turn + sum(e["tool"] == tool and not e.get("refused") for e in traj.tool_log) >= own:
            return TOOL_LIMIT_TEXT.format(tool=tool, limit=own)
        return None

    def _run_queued(self) -> None:
        if not self._queue:
            return
        turns, self._queue = self._queue, []
        calls = [call for turn in turns for call in turn.calls]
        if calls:
            t0 = time.perf_counter()
            results = iter(self.tools.run(calls))
            self._count("tool_seconds", time.perf_counter() - t0)
            self._count("tool_calls", len(calls))
            for turn in turns:
                turn.fill([next(results) for _ in turn.calls])
        for turn in turns:
            self._splice_turn(turn)

    def _splice_turn(self, turn: _Turn) -> None:
        """Append a turn's results as the format renders them (loss mask 0), cut at the response budget; each
        call gets a `tool_log` entry spanning the appended tokens."""
        row = turn.row
        traj, budget = row.traj, self.settings.max_response_length
        ids = self.format.result_ids([(item.parsed, item.result.text, item.own) for item in turn.items])
        ids = ids[:budget - len(traj)]
        start = len(traj)
        traj.append(ids, generated=0)
        for item in turn.items:
            result = item.result
            phases = {"phases": result.meta["phases"]} if result.meta.get("phases") else {}  # the browser's timing
            for phase, seconds in result.meta.get("phases", {}).items():
                self._count(f"{item.parsed.tool}_{phase}_seconds", seconds)
            env = {"env_calls": result.meta["env_calls"]} if "env_calls" in result.meta else {}
            if result.meta.get("env_error"):
                self._count("env_errors", 1)
            payload = item.parsed.payload if item.parsed.kind in (None, "empty") else item.parsed.text
            kind = {"kind": item.parsed.kind} if item.parsed.kind else {}  # why the call could not run (metrics)
            traj.tool_log.append(dict(tool=item.parsed.tool, payload=payload, ok=result.ok, seconds=result.seconds,
                                      start=start, end=len(traj), refused=item.refused, **phases, **env, **kind))
        row.turn_start = len(traj)
        if len(traj) >= budget:
            row.finish("length")

    def _count(self, key: str, value: float) -> None:
        self.stats[key] = self.stats.get(key, 0) + value


def _specs(tools) -> list:
    """The specs of the loop's tools: the runner's, or by name (a test double with only `names` and `run`)."""
    specs = getattr(tools, "specs", None)
    if specs:
        return list(specs.values())
    from appo.tools.registry import default_spec

    return [default_spec(name) for name in (tools.names if tools is not None else ())]


def run_tool_loop(engine: Engine, tools, starts: list[LoopStart], cfg: RolloutLoopSettings,
                  stats: dict | None = None, *, keep: KeptCaches | None = None,
                  on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
    """Run every start to completion; trajectories come back in the order of `starts`. `keep` and
    `on_done` as in ToolLoop."""
    loop = ToolLoop(engine, tools, cfg, stats, keep=keep, on_done=on_done)
    rows = [loop.add(s) for s in starts]
    loop.run()
    return [r.traj for r in rows]
