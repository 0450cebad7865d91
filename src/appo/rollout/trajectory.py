"""Trajectories as token records: every response token has an id, a generated flag, a behaviour log-prob
and an entropy, in arrays that never shift (tool-result tokens get records too, with 0.0 values)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from appo.tool_format import RESULT_TEMPLATE

# What `generated_text` puts where a tool result was: the empty frame of the tool loop's result template.
RESULT_PLACEHOLDER = RESULT_TEMPLATE.format(text="")
REWARD_TEXT = ("generated", "full")


@dataclass
class Trajectory:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)     # 1 = sampled by the policy, 0 = tool result/forced
    logprobs: list[float] = field(default_factory=list)    # behaviour log-prob of each token (0.0 if not sampled)
    entropies: list[float] = field(default_factory=list)   # entropy of each sampling step (0.0 if not sampled)
    tool_calls: int = 0                                    # calls made in the response (the call limit's counter)
    tool_log: list[dict] = field(default_factory=list)     # {tool, payload, ok, seconds, start, end}: the result
    #                                                        occupies response positions [start, end)
    finish_reason: str | None = None                       # eos | answer | length | call_limit; None while running
    kind: str = "init"                                     # init | branch
    group: int = 0                                         # index of the prompt in the batch
    parent: int | None = None                              # branch: index of its initial rollout in the group
    split_pos: int | None = None                           # branch: last response position copied from the parent
    branch_score: float | None = None
    reward: float | None = None
    env_reward: float | None = None                        # the environment's own reward (algorithm.rewards: env)
    meta: dict = field(default_factory=dict)
    top_logprobs: list[dict[int, float]] | None = None     # optional, aligned like logprobs ({} if not sampled)
    tool_format: str = "tags"                              # how calls and results are written (tools.format)

    def __len__(self) -> int:
        return len(self.token_ids)

    def append(self, token_ids: list[int], *, generated: int, logprobs: list[float] | None = None,
               entropies: list[float] | None = None, top_logprobs: list[dict[int, float]] | None = None) -> None:
        """Add records for `token_ids`; tokens the policy did not sample get 0.0 log-prob and entropy."""
        n = len(token_ids)
        self.token_ids += token_ids
        self.generated += [generated] * n
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * n
        self.entropies += list(entropies) if entropies is not None else [0.0] * n
        if self.top_logprobs is not None:
            self.top_logprobs += list(top_logprobs) if top_logprobs is not None else [{} for _ in range(n)]

    def prefix(self, length: int) -> Trajectory:
        """A copy holding the first `length` response records: what a branch continues from. Tool calls
        whose result lies entirely inside the prefix are kept (and counted, unless refused at the call
        limit); the rest are dropped."""
        log = [dict(e) for e in self.tool_log if e["end"] <= length]
        return Trajectory(
            prompt_ids=list(self.prompt_ids), token_ids=self.token_ids[:length],
            generated=self.generated[:length], logprobs=self.logprobs[:length],
            entropies=self.entropies[:length], tool_calls=sum(not e.get("refused") for e in log),
            tool_log=log, kind=self.kind, tool_format=self.tool_format,
            group=self.group, meta=copy.deepcopy(self.meta),
            top_logprobs=None if self.top_logprobs is None else [dict(d) for d in self.top_logprobs[:length]])

    def response_text(self, tokenizer, skip_special_tokens: bool = True) -> str:
        """The whole response as the model saw it, tool results included."""
        return tokenizer.decode(self.token_ids, skip_special_tokens=skip_special_tokens)

    def generated_text(self, tokenizer, skip_special_tokens: bool = True) -> str:
        """The response with the content of every tool result removed: each result span (as in `tool_log`)
        becomes RESULT_PLACEHOLDER, so what a tool printed can never be read as the policy's answer,
        while the frame that format checks look for (a call, then <result>...</result>) stays."""
        parts, pos = [], 0
        for entry in sorted(self.tool_log, key=lambda e: e["start"]):
            if entry["start"] < pos:
                continue  # another call of the same turn: its results were appended together (chat templates)
            parts.append(tokenizer.decode(self.token_ids[pos:entry["start"]], skip_special_tokens=skip_special_tokens))
            parts.append(RESULT_PLACEHOLDER)
            pos = entry["end"]
        parts.append(tokenizer.decode(self.token_ids[pos:], skip_special_tokens=skip_special_tokens))
        return "".join(parts)

    def final_turn_text(self, tokenizer, skip_special_tokens: bool = True) -> str:
        """The final assistant turn: what the policy wrote after its last tool result (the whole response when
        it made no call; empty when the response ended inside a result)."""
        start = max((e["end"] for e in self.tool_log), default=0)
        return tokenizer.decode(self.token_ids[start:], skip_special_tokens=skip_special_tokens)

    def reward_text(self, tokenizer, source: str = "generated") -> str:
        """The text rewards and evaluation score (`algorithm.reward_text`): 'generated' (`generated_text`;
        with `tools.format=chat_template`, `final_turn_text`: the answer is the last assistant turn, as a chat
        client reads it, never a turn that went on to call tools) or 'full' (`response_text`, tool output
        included, the reference)."""
        if source == "generated":
            if self.tool_format == "chat_template":
                return self.final_turn_text(tokenizer)
            return self.generated_text(tokenizer)
        if source == "full":
            return self.response_text(tokenizer)
        raise ValueError(f"reward text source {source!r} is not valid; choose one of: {', '.join(REWARD_TEXT)}")

    def to_dict(self, tokenizer=None) -> dict[str, Any]:
        """A JSON-ready record (top-k log-probs omitted); with a tokenizer, the texts too."""
        out = {k: v for k, v in vars(self).items() if k != "top_logprobs"}
        if tokenizer is not None:
            out["prompt_text"] = tokenizer.decode(self.prompt_ids, skip_special_tokens=False)
            out["response_text"] = self.response_text(tokenizer, skip_special_tokens=False)
        return out


@dataclass
class RolloutGroup:
    """One prompt with its initial rollouts and its branches (each branch's `parent` indexes `inits`)."""
    prompt: Any
    inits: list[Trajectory] = field(default_factory=list)
    branches: list[Trajectory] = field(default_factory=list)

    @property
    def rows(self) -> list[Trajectory]:
        return self.inits + self.branches
