"""A batched sampler over a Hugging Face causal LM: our own decode loop with a KV cache.

Why not `model.generate`: the tool loop needs, per token, the sampled log-prob and the exact entropy of
the distribution it was drawn from, per-row stop strings that end a row right after the string (HF pads
finished rows with pad = eos, which poisons the next turn), per-row seeds, and rows that leave the batch
as they finish.

What the numbers mean:
- The sampling distribution is softmax(logits / temperature), then top-k, then top-p, renormalised (the
  order vLLM and HF use), with the repetition penalty (when set) applied to the logits first. `logprobs`,
  `entropies` and `top_logprobs` describe exactly that distribution
  (vLLM's "processed" log-probs). With the defaults (T=1, no truncation) it is the model's raw
  distribution. At temperature 0 (greedy) the sampled distribution is a point mass, which carries no
  information, so the numbers are those of the T=1 distribution after top-k/top-p.
- Entropy is exact over the full vocabulary, computed in float32 from the logits.
- Sampling is Gumbel-max: argmax(log p + g) with iid standard Gumbel draws g (exactly the distribution p).
  The draw for vocabulary entry v of a request's t-th token is a hash of (the request's seed, t, v)
  (splitmix64, 53-bit uniforms, float64), so it depends on nothing else: not on which other rows share
  the batch, nor on the order they are served in. Only the 64 likeliest entries draw their own g; the rest
  are summed up by one draw of their own (`gumbel_max`), which is the same distribution. (A torch
  generator per row drawing all 49k entries cost over half the forward.) A row's logits can still differ in the last bits with the batch's padding or with how its KV
  cache was computed; Gumbel-max flips a sample only when the two best perturbed scores are that close
  (about 1e-5 of a step's draws), where an inverse-CDF draw flips whenever it lands among the tail's tiny
  tokens, whose CDF intervals are narrower than the rounding. Requests without a seed get one from the
  engine's own seeded generator.
- On AMD CPUs every float32 linear layer runs through oneDNN with its weight packed once per update
  (`rollout/packed_linears.py`): the same product, faster than MKL's for decode-sized inputs (docs/performance.md).

Sessions (`open_session`, used by the tool loop when `kv_reuse` is on): sequences keep their KV cache
between engine calls. A sequence joins with the cache of the ids it already has (`KVState`), so only the
ids after it are prefilled (a tool result, a branch's split token); it decodes with the others one token
per `step` and leaves, handing its cache back, when its segment ends. Sampling is the same as `generate`:
same per-request seeds, same distribution, so the two paths agree token by token up to float rounding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from appo.core.runs import cheapest_runs
from appo.rollout.engine import GenRequest, GenResult
from appo.rollout.gumbel import gumbel_max, noise_key
from appo.rollout.packed_linears import packed_linears
from appo.rollout.teacher_forcing import common_prefix_length


@dataclass
class _Row:
    req: GenRequest
    seed: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    finish: str | None = None
    stop_str: str | None = None

    def result(self) -> GenResult:
        return GenResult(token_ids=self.tokens, logprobs=self.logprobs, entropies=self.entropies,
                         top_logprobs=self.top if self.req.logprobs > 0 else None,
                         finish_reason=self.finish or "length", stop_str=self.stop_str)


class HFEngine:
    """Samples from `model` in place: the learner's module can be shared, with no copy of the weights.

    Rows are grouped by prompt length into batches of at most `max_batch_size`, left-padded, and decoded
    together; a row that finishes is dropped from the KV cache so that later steps compute only live rows.
    """

    exact_entropy = True  # full-vocabulary entropies from the logits

    def __init__(self, model, tokenizer, *, max_batch_size: int = 64, seed: int = 0, own_copy: bool = False,
                 kv_reuse: bool = True):
        self.model = model
        self.own_copy = own_copy
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.kv_reuse = kv_reuse
        self.peak_kv_bytes = 0   # the largest KV cache a `generate` batch held (sessions: see ToolLoop stats)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self._seeds = random.Random(seed)

    def load_weights(self, weights) -> None:
        """Refresh the engine's own copy of the policy from `weights()` (a replica under torchrun); a no-op
        when the engine samples with the learner's module itself (`own_copy=False`)."""
        if not self.own_copy:
            return
        own = self.model.state_dict()
        with torch.no_grad():
            for name, value in weights().items():
                if name not in own:
                    raise KeyError(f"load_weights: unknown parameter '{name}'")
                own[name].copy_(value)

    @property
    def supports_sessions(self) -> bool:
        """Whether `open_session` may be used: `kv_reuse` is on and the model's cache is a plain per-layer
        key/value cache (sliding-window or hybrid caches cannot be cut and re-packed this way)."""
        if not self.kv_reuse:
            return False
        layers = DynamicCache(config=self.model.config).layers
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def open_session(self) -> DecodeSession:
        return DecodeSession(self)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        for req in requests:
            if not req.prompt_ids:
                raise ValueError("GenRequest.prompt_ids is empty; a prompt needs at least one token")
        rows = [_Row(req, req.seed if req.seed is not None else self._seeds.getrandbits(63)) for req in requests]
        # Similar lengths together keep left padding (wasted compute) small.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].req.prompt_ids))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), packed_linears(self.model):
                for start in range(0, len(order), self.max_batch_size):
                    self._decode([rows[i] for i in order[start:start + self.max_batch_size]])
        finally:
            self.model.train(was_training)
        return [row.result() for row in rows]

    # ------------------------------------------------------------------------------------ decoding

    def _decode(self, rows: list[_Row]) -> None:
        alive = [r for r in rows if r.req.max_new_tokens > 0]
        if not alive:
            return
        device = next(self.model.parameters()).device
        width = max(len(r.req.prompt_ids) for r in alive)
        ids = torch.full((len(alive), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(alive), width), dtype=torch.long)
        for i, r in enumerate(alive):
            n = len(r.req.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.req.prompt_ids)
            mask[i, width - n:] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _growing_cache(self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        next_pos = mask.sum(-1)
        while True:
            tokens = self._sample_step(out.logits[:, -1], alive)
            keep = [i for i, r in enumerate(alive) if r.finish is None]
            if not keep:
                return
            if len(keep) < len(alive):
                order = _compact(cache, keep)
                index = torch.tensor(order, device=device)
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                alive = [alive[i] for i in order]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)
            next_pos = next_pos + 1
            self.peak_kv_bytes = max(self.peak_kv_bytes, _cache_bytes(cache))

    def _sample_step(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Draw one token per row, record its log-prob, entropy and top-k, and mark finished rows."""
        logits = apply_repetition_penalty(logits.float(), rows)
        dev = logits.device
        temps = torch.tensor([r.req.temperature for r in rows], device=dev)
        greedy = temps == 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        top_k = [r.req.top_k for r in rows]
        top_p = [r.req.top_p for r in rows]
        if any(k > 0 for k in top_k) or any(p < 1 for p in top_p):
            scaled = truncate_logits(scaled, torch.tensor(top_k, device=dev), torch.tensor(top_p, device=dev))
        logp = torch.log_softmax(scaled, dim=-1)
        probs = logp.exp()
        entropy = torch.special.entr(probs).sum(-1)
        tokens = logits.argmax(-1)
        hot = [i for i, r in enumerate(rows) if r.req.temperature != 0]  # greedy rows draw no noise
        if hot:
            at = torch.tensor(hot, device=dev)
            tokens[at] = gumbel_max(logp[at], [noise_key(rows[i].seed, len(rows[i].tokens)) for i in hot])
        chosen = logp.gather(-1, tokens[:, None]).squeeze(-1)

        want = max(r.req.logprobs for r in rows)
        top_vals = top_ids = None
        if want > 0:
            vals, idx = logp.topk(min(want, logp.shape[-1]), dim=-1)
            top_vals, top_ids = vals.tolist(), idx.tolist()
        for i, (r, tok, lp, ent) in enumerate(zip(rows, tokens.tolist(), chosen.tolist(), entropy.tolist())):
            r.tokens.append(tok)
            r.logprobs.append(lp)
            r.entropies.append(ent)
            if r.req.logprobs > 0:
                k = r.req.logprobs
                entry = dict(zip(top_ids[i][:k], top_vals[i][:k]))
                entry.setdefault(tok, lp)
                r.top.append(entry)
            self._check_finished(r, tok)
        return tokens

    def _check_finished(self, row: _Row, token: int) -> None:
        if token in self.eos_ids:
            row.finish = "eos"
            return
        for stop in row.req.stop:
            # An occurrence must end in the newest token (earlier ones would have stopped the row), and
            # every token of it holds at least one of its bytes: this window always covers it.
            window = len(stop.encode("utf-8")) + 1
            if stop in self.tokenizer.decode(row.tokens[-window:], skip_special_tokens=False):
                row.finish, row.stop_str = "stop", stop
                return
        if len(row.tokens) >= row.req.max_new_tokens:
            row.finish = "length"


def apply_repetition_penalty(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """The CTRL / Hugging Face repetition penalty p, before temperature: for every token already in the row's
    prompt or output, a positive logit is divided by p and a negative one multiplied by p (vLLM's
    `repetition_penalty` is the same rule). Rows with p = 1 are unchanged."""
    penalties = [r.req.repetition_penalty for r in rows]
    if all(p == 1.0 for p in penalties):
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool)
    for i, r in enumerate(rows):
        if penalties[i] != 1.0:
            seen[i, torch.tensor(r.req.prompt_ids + r.tokens, device=logits.device)] = True
    p = torch.tensor(penalties, device=logits.device, dtype=logits.dtype)[:, None]
    return torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)


@dataclass
class KVState:
    """The KV cache of a sequence outside the decode batch: per layer (keys, values) of shape
    [1, heads, length, head_dim], for the first `length` of its ids. Never written in place (joining the
    batch copies it), so forks and branches share one without copying."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int

    def prefix(self, length: int) -> KVState:
        """The cache of the first `length` ids (views: no copy)."""
        length = min(length, self.length)
        return KVState([(k[:, :, :length], v[:, :, :length]) for k, v in self.layers], length)

    @property
    def nbytes(self) -> int:
        return sum(k.element_size() * k.numel() * 2 for k, _ in self.layers)


@dataclass
class _Seq(_Row):
    key: Any = None
    past: KVState | None = None


class DecodeSession:
    """Continuous batching over one HF engine. `add` queues a sequence (its request's `prompt_ids` are all
    its ids so far, `past` the cache of a prefix of them); `step` prefills the queued ones (only the ids
    after their cache), then decodes one token for every sequence in the batch, and returns those whose
    segment ended as (key, GenResult, KVState of every id fed so far: prompt_ids + tokens but the last).

    The batch is one left-padded cache (`_GrowingLayer`); a sequence that leaves has its rows copied out
    and the last live row moved into its place, one that joins is written into a spare row. Each sequence
    samples with noise keyed by its own seed, exactly as in `HFEngine.generate`, so which sequences share a
    step changes nothing but float rounding.
    """

    def __init__(self, engine: HFEngine):
        self.engine = engine
        self.model = engine.model
        self.device = next(self.model.parameters()).device
        self.queued: list[_Seq] = []
        self.batch: list[_Seq] = []
        self.cache: DynamicCache | None = None
        self.mask = self.next_pos = self.pending = None
        self.prefill_tokens = 0      # ids run through prefill forwards (pads excluded)
        self.shared_tokens = 0       # ids of fresh sequences prefilled once for several (same ids, common start)
        self.decode_tokens = 0

    def __len__(self) -> int:
        return len(self.queued) + len(self.batch)

    def add(self, key, request: GenRequest, past: KVState | None = None) -> None:
        if not request.prompt_ids:
            raise ValueError("GenRequest.prompt_ids is empty; a prompt needs at least one token")
        if past is not None and past.length >= len(request.prompt_ids):
            past = past.prefix(len(request.prompt_ids) - 1)  # the last id must be fed for its logits
        seed = request.seed if request.seed is not None else self.engine._seeds.getrandbits(63)
        self.queued.append(_Seq(request, seed, key=key, past=past if past and past.length else None))

    @property
    def kv_bytes(self) -> int:
        """Bytes held by the batch's cache now (sequences outside it hold their own KVState)."""
        return 0 if self.cache is None else _cache_bytes(self.cache)

    def step(self) -> list[tuple[Any, GenResult, KVState | None]]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), packed_linears(self.model):
                done = self._join(self.queued) if self.queued else []
                self.queued = []
                if self.batch:
                    done += self._decode_step()
        finally:
            self.model.train(was_training)
        return done

    # ----------------------------------------------------------------------------------- internals

    def _join(self, seqs: list[_Seq]) -> list:
        done = [(s.key, s.result(), s.past) for s in seqs if s.req.max_new_tokens <= 0]
        seqs = [s for s in seqs if s.req.max_new_tokens > 0]
        if not seqs:
            return done
        # Fresh sequences with the same ids (a prompt's m rollouts) share one prefill row: their caches and
        # logits are the same, only their seeds differ.
        rows: list[_Seq] = []       # the sequences whose ids are prefilled
        unique: list[int] = []      # per sequence, its row in `rows`
        seen: dict[tuple, int] = {}
        for s in seqs:
            key = tuple(s.req.prompt_ids) if s.past is None else None
            if key is not None and key in seen:
                unique.append(seen[key])
                continue
            if key is not None:
                seen[key] = len(rows)
            unique.append(len(rows))
            rows.append(s)
        self._prefill_common_start(rows)
        # Rows are padded to the longest new ids of their forward: one row back from its tool with 89 new ids
        # would make sixteen with 13-17 compute 89 slots each, so such a join runs as several forwards.
        logits: list[torch.Tensor] = [None] * len(rows)
        kept: list[KVState] = [None] * len(rows)
        news = [len(s.req.prompt_ids) - (s.past.length if s.past else 0) for s in rows]
        for group in padded_groups(news, self.FORWARD_SLOTS):
            for i, row_logits, state in zip(group, *self._prefill([rows[i] for i in group])):
                logits[i], kept[i] = row_logits, state
        self.shared_tokens += sum(len(s.req.prompt_ids) for s in seqs) - sum(len(s.req.prompt_ids) for s in rows)
        tokens = self.engine._sample_step(torch.stack([logits[u] for u in unique]), seqs)
        states = [kept[u] for u in unique]
        joining = []
        for s, state, tok in zip(seqs, states, tokens.tolist()):
            s.past = None
            if s.finish is not None:
                done.append((s.key, s.result(), _copied(state)))
            else:
                joining.append((s, state, tok))
        if joining:
            self._merge(joining)
        return done

    # What one more forward costs, in padded slots: it reads every weight once, so even a 1-token forward
    # costs as much as many prefilled tokens (measured: docs/performance.md).
    FORWARD_SLOTS = 32

    def _prefill(self, rows: list[_Seq]) -> tuple[torch.Tensor, list[KVState]]:
        """One forward over the rows' ids after their caches: each row's logits for its next token and the
        cache of all its ids so far (views into this forward's cache)."""
        pasts = [s.past.length if s.past else 0 for s in rows]
        news = [s.req.prompt_ids[p:] for s, p in zip(rows, pasts)]
        width_past, width_new = max(pasts), max(len(n) for n in news)
        # Layout per row: [left pad][its cache][its new ids][right pad]; the mask hides both pads, and every
        # real query sees at least one real key, so no softmax row is empty.
        ids = torch.full((len(rows), width_new), self.engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width_past + width_new), dtype=torch.long)
        for i, (p, new) in enumerate(zip(pasts, news)):
            ids[i, :len(new)] = torch.tensor(new)
            mask[i, width_past - p:width_past + len(new)] = 1
        positions = torch.tensor(pasts)[:, None] + torch.arange(width_new)[None, :]
        cache = _growing_cache(self.model.config)
        if width_past:
            blank = next(s.past for s in rows if s.past).prefix(0)  # a row with no cache yet
            for j, layer in enumerate(cache.layers):
                layer.add_rows([(s.past or blank).layers[j] for s in rows])
        last = [len(n) - 1 for n in news]
        cols = sorted(set(last))
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                         logits_to_keep=torch.tensor(cols, device=self.device))
        self.prefill_tokens += sum(len(n) for n in news)
        pick = torch.tensor([cols.index(c) for c in last], device=self.device)
        logits = out.logits[torch.arange(len(rows), device=self.device), pick]
        states = [KVState([(layer.keys[u:u + 1, :, width_past - pasts[u]:width_past + len(news[u])],
                            layer.values[u:u + 1, :, width_past - pasts[u]:width_past + len(news[u])])
                           for layer in cache.layers], pasts[u] + len(news[u])) for u in range(len(rows))]
        return logits, states

    # Prefilling a common start once costs one more forward; below this many ids saved it is not worth it.
    MIN_SHARED_START = 64

    def _prefill_common_start(self, rows: list[_Seq]) -> None:
        """Fresh rows of one join that begin alike (the system prompt every prompt opens with) get the cache
        of that start from one 1-row prefill, so the join prefills only what follows it. Causal attention
        makes a start's keys and values independent of what follows: the same cache, up to float rounding."""
        fresh = [s for s in rows if s.past is None]
        if len(fresh) < 2:
            return
        first = fresh[0].req.prompt_ids
        last = min(len(s.req.prompt_ids) for s in fresh) - 1  # each row's last id is fed for its logits
        common = min(last, common_prefix_length([s.req.prompt_ids for s in fresh]))
        if common * (len(fresh) - 1) < self.MIN_SHARED_START:
            return
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=torch.tensor([first[:common]], device=self.device), past_key_values=cache,
                   use_cache=True, logits_to_keep=1)
        self.prefill_tokens += common
        self.shared_tokens += common * (len(fresh) - 1)
        start = KVState([(layer.keys, layer.values) for layer in cache.layers], common)
        for s in fresh:
            s.past = start

    def _merge(self, joining: list) -> None:
        """Write the joining sequences' caches into spare rows of the batch's (the batch's rows stay put)."""
        old = len(self.batch)
        width_old = self.mask.shape[1] if old else 0
        if not old:
            self.cache = _growing_cache(self.model.config)
        for j, layer in enumerate(self.cache.layers):
            layer.add_rows([state.layers[j] for _, state, _ in joining])
        width = max([width_old] + [state.length for _, state, _ in joining])
        mask = torch.zeros((old + len(joining), width), dtype=torch.long, device=self.device)
        if old:
            mask[:old, width - width_old:] = self.mask
        for i, (_, state, _) in enumerate(joining):
            mask[old + i, width - state.length:] = 1
        joined_pos = torch.tensor([state.length for _, state, _ in joining], device=self.device)
        joined_tok = torch.tensor([tok for _, _, tok in joining], device=self.device)
        self.mask = mask
        self.next_pos = torch.cat([self.next_pos, joined_pos]) if old else joined_pos
        self.pending = torch.cat([self.pending, joined_tok]) if old else joined_tok
        self.batch += [s for s, _, _ in joining]

    def _decode_step(self) -> list:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.batch), 1))], dim=1)
        out = self.model(input_ids=self.pending[:, None], attention_mask=self.mask,
                         position_ids=self.next_pos[:, None], past_key_values=self.cache, use_cache=True)
        self.decode_tokens += len(self.batch)
        self.next_pos = self.next_pos + 1
        self.pending = self.engine._sample_step(out.logits[:, -1], self.batch)
        finished = [i for i, s in enumerate(self.batch) if s.finish is not None]
        if not finished:
            return []
        width = self.mask.shape[1]
        lengths = self.next_pos.tolist()
        done = [(self.batch[i].key, self.batch[i].result(),
                 KVState([(layer.keys[i:i + 1, :, width - lengths[i]:].clone(),
                           layer.values[i:i + 1, :, width - lengths[i]:].clone()) for layer in self.cache.layers],
                         lengths[i])) for i in finished]
        keep = [i for i, s in enumerate(self.batch) if s.finish is None]
        if not keep:
            self.batch = []
            self.cache = self.mask = self.next_pos = self.pending = None
            return done
        order = _compact(self.cache, keep)
        self.batch = [self.batch[i] for i in order]
        index = torch.tensor(order, device=self.device)
        self.mask, self.next_pos, self.pending = self.mask[index], self.next_pos[index], self.pending[index]
        cut = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # columns that are padding in every row
        if cut:
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.cut_columns(cut)
        return done


def _cache_bytes(cache: DynamicCache) -> int:
    return sum(layer.nbytes for layer in cache.layers if layer.is_initialized)


class _GrowingLayer(DynamicLayer):
    """One layer's keys/values of a left-padded batch, kept in a zeroed buffer [row capacity, heads, column
    capacity, head_dim] with spare rows and columns: rows `[0, rows)` are live, columns `[start, end)` the
    window every live row is right-aligned in. `keys`/`values` are views of that window.

    Why: a decode step then writes one column in place, a row that leaves is replaced by the last live row
    (one row copied), one that joins is written into a spare row, and cutting padding columns moves `start`.
    Concatenating or re-packing the whole cache instead moved gigabytes per step at 100 rows (a third of a
    tool-heavy evaluation's time). Columns outside a row's own tokens are masked out; they hold zeros or
    another row's old (finite) values, which the zero attention weight cancels. Code that replaces
    `keys`/`values` from outside makes the next write adopt them into a fresh buffer."""

    _k: torch.Tensor | None = None
    _v: torch.Tensor | None = None
    _view: torch.Tensor | None = None
    rows = start = end = 0

    def _set_window(self) -> None:
        self.keys = self._k[:self.rows, :, self.start:self.end]
        self.values = self._v[:self.rows, :, self.start:self.end]
        self._view = self.keys

    def _own(self) -> None:
        """Take over `keys`/`values` set from outside (or nothing yet) as the live window."""
        if self._k is not None and self._view is self.keys:
            return
        self._k = self._v = None
        self.rows = self.start = self.end = 0
        if self.keys.dim() == 4:
            self._k, self._v = self.keys, self.values
            self.rows, self.end = self.keys.shape[0], self.keys.shape[2]
            self._realloc(self.rows, 0, max(32, self.end // 2), self.keys)

    def _realloc(self, row_cap: int, left: int, right: int, like: torch.Tensor) -> None:
        """A new zeroed buffer for `row_cap` rows with the window at `left` and `right` spare columns after it."""
        width = self.end - self.start
        shape = (row_cap, like.shape[1], left + width + right, like.shape[3])
        k, v = like.new_zeros(shape), like.new_zeros(shape)
        if self.rows and width:
            k[:self.rows, :, left:left + width] = self._k[:self.rows, :, self.start:self.end]
            v[:self.rows, :, left:left + width] = self._v[:self.rows, :, self.start:self.end]
        self._k, self._v, self.start, self.end = k, v, left, left + width
        self._set_window()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._own()
        new = key_states.shape[-2]
        if self._k is None or self.rows != key_states.shape[0] or self.end + new > self._k.shape[2]:
            if self.rows and self.rows != key_states.shape[0]:
                raise RuntimeError(f"cache holds {self.rows} rows, the step feeds {key_states.shape[0]}")
            self.rows = key_states.shape[0]
            need = self.end - self.start + new
            self._realloc(self.rows, 0, new + max(32, need // 2), key_states)
        self._k[:self.rows, :, self.end:self.end + new] = key_states
        self._v[:self.rows, :, self.end:self.end + new] = value_states
        self.end += new
        self._set_window()
        return self.keys, self.values

    def add_rows(self, blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append rows: each block's keys/values [b, heads, n, dim] right-aligned at the window's end."""
        k0 = blocks[0][0]
        if not self.is_initialized:
            self.lazy_initialization(k0, blocks[0][1])
        self._own()
        rows = self.rows + sum(k.shape[0] for k, _ in blocks)
        longest = max(k.shape[2] for k, _ in blocks)
        if self._k is None or rows > self._k.shape[0] or longest > self.end:
            width = max(self.end - self.start, longest)
            self._realloc(rows + max(4, rows // 2), width - (self.end - self.start), max(32, width // 2), k0)
        at = self.rows
        for k, v in blocks:
            b, n = k.shape[0], k.shape[2]
            self._k[at:at + b, :, self.end - n:self.end] = k
            self._v[at:at + b, :, self.end - n:self.end] = v
            at += b
        self.rows, self.start = rows, min(self.start, self.end - longest)
        self._set_window()

    def keep_rows(self, holes: list[int], movers: list[int], rows: int) -> None:
        """Keep `rows` rows: row `movers[i]` moves into `holes[i]` (see `_compact`)."""
        if not self.is_initialized:  # a model that keeps no cache
            return
        self._own()
        if holes:
            to, frm = torch.tensor(holes, device=self._k.device), torch.tensor(movers, device=self._k.device)
            self._k[to, :, self.start:self.end] = self._k[frm, :, self.start:self.end]
            self._v[to, :, self.start:self.end] = self._v[frm, :, self.start:self.end]
        self.rows = rows
        if rows and 4 * rows < self._k.shape[0]:  # mostly empty: give the memory back
            self._realloc(rows + max(4, rows // 2), 0, self._k.shape[2] - self.end, self._k)
        self._set_window()

    def cut_columns(self, n: int) -> None:
        """Drop the window's first `n` columns (padding in every live row)."""
        if not self.is_initialized:
            return
        self._own()
        self.start += n
        self._set_window()

    @property
    def nbytes(self) -> int:
        """Bytes this layer keeps alive, spare capacity included."""
        held = self._k if self._k is not None and self._view is self.keys else self.keys
        return held.element_size() * held.numel() * 2


def _growing_cache(config) -> DynamicCache:
    cache = DynamicCache(config=config)
    cache.layers = [_GrowingLayer() for _ in cache.layers]
    return cache


def padded_groups(lengths: list[int], overhead: int) -> list[list[int]]:
    """Indices cut into groups, longest first, so that padding every group to its longest member plus
    `overhead` per group computes the fewest slots."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    runs = cheapest_runs(len(order), lambda j: ((i, (j - i) * lengths[order[i]] + overhead) for i in range(j)))
    return [[order[k] for k in run] for run in runs]


def _compact(cache: DynamicCache, keep: list[int]) -> list[int]:
    """Keep the rows `keep` (ascending) of every layer, moving the last survivors into the gaps the others
    leave rather than re-packing all rows. Returns the new row order: new row i is old row order[i]."""
    n = len(keep)
    kept = set(keep)
    holes = [i for i in range(n) if i not in kept]
    movers = [i for i in keep if i >= n]
    order = list(range(n))
    for h, m in zip(holes, movers, strict=True):
        order[h] = m
    for layer in cache.layers:
        layer.keep_rows(holes, movers, n)
    return order


def _copied(state: KVState) -> KVState:
    """A KVState that owns its memory (a view would keep the whole batch's cache alive)."""
    return KVState([(k.clone(), v.clone()) for k, v in state.layers], state.length)


def truncate_logits(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k then top-p (nucleus) truncation; dropped entries become -inf. The most likely token
    always survives, so every row keeps a valid distribution."""
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(scaled.shape[-1], device=scaled.device)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, scaled.shape[-1]))
    drop = ranks[None, :] >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1)
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    if extra is not None:
        ids.update(int(x) for x in (extra if isinstance(extra, (list, tuple)) else [extra]))
    if not ids:
        raise ValueError("the tokenizer and the model's generation config define no EOS token")
    return ids
