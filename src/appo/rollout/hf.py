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
- Sampling is by inverse CDF with one uniform draw per row and step from a per-row generator seeded by
  the request's seed. A row's draws therefore do not depend on which other rows share its batch; its
  logits can still differ in the last bits with the batch's padding, which in rare cases flips a
  near-tie. Requests without a seed get one from the engine's own seeded generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from appo.rollout.engine import GenRequest, GenResult


@dataclass
class _Row:
    req: GenRequest
    rng: random.Random
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

    def __init__(self, model, tokenizer, *, max_batch_size: int = 64, seed: int = 0, own_copy: bool = False):
        self.model = model
        self.own_copy = own_copy
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
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

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        for req in requests:
            if not req.prompt_ids:
                raise ValueError("GenRequest.prompt_ids is empty; a prompt needs at least one token")
        rows = [_Row(req, random.Random(req.seed if req.seed is not None else self._seeds.getrandbits(63)))
                for req in requests]
        # Similar lengths together keep left padding (wasted compute) small.
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].req.prompt_ids))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
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
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        next_pos = mask.sum(-1)
        while True:
            tokens = self._sample_step(out.logits[:, -1], alive)
            keep = [i for i, r in enumerate(alive) if r.finish is None]
            if not keep:
                return
            if len(keep) < len(alive):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, next_pos, tokens = mask[index], next_pos[index], tokens[index]
                alive = [alive[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)
            next_pos = next_pos + 1

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
        cdf = probs.double().cumsum(-1)
        u = torch.tensor([r.rng.random() for r in rows], device=dev, dtype=torch.float64) * cdf[:, -1]
        sampled = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
        tokens = torch.where(greedy, logits.argmax(-1), sampled)
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
