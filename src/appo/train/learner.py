"""The learner: teacher-forced log-probs of response tokens and the PPO actor update.

Rows are (prompt ids, response ids) pairs, scored by `appo.rollout.teacher_forcing` (the LM head runs on
response positions only). Mini-batches are split into micro-batches for gradient accumulation, and every
micro-batch loss is normalised by the WHOLE mini-batch's token (or sequence) count, so the accumulated
gradient equals that of one big batch. Micro-batches hold `micro_batch_size` rows, or with
`use_dynamic_bsz` as many rows as fit a token budget (the forward's padded token count), so the gradient is
the same either way.

Under torchrun (several processes) the policy and the reference are sharded with FSDP2: each decoder
layer, then `ResponseLogits` (decoder -> picked positions -> LM head) as the root unit. Each rank trains on
its share of every mini-batch; the normaliser is the all-reduced mini-batch count and each rank's loss is
multiplied by the world size (FSDP averages gradients over ranks), so an optimizer step equals the
single-process step on the union of the ranks' rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from appo.config import ActorConfig, LoraConfig, ModelConfig
from appo.core.loss import (
    agg_loss,
    future_kl_loss,
    gspo_loss,
    kl_penalty,
    mismatch_summary,
    ppo_loss,
    rollout_correction,
)
from appo.core.runs import cheapest_runs
from appo.rollout.packed_linears import forget_packed, packed_linears
from appo.rollout.teacher_forcing import ResponseLogits, forward_tokens, response_log_probs
from appo.train import distributed

log = logging.getLogger(__name__)


@dataclass
class UpdateBatch:
    """What one actor update consumes; tensors are [rows, max response length], aligned with responses."""
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    loss_mask: torch.Tensor
    # None: the update is one optimizer step from the weights that sampled (Learner.single_step), so the
    # ratio's denominator is that step's own forward, detached, and no separate forward is needed.
    old_log_probs: torch.Tensor | None
    advantages: torch.Tensor
    ref_log_probs: torch.Tensor | None = None
    # The sampler's own log-probs of the response tokens: the gap to the learner's is logged (mismatch/*)
    # and, with `correct`, importance-corrected in the loss (actor.rollout_correction).
    sampler_log_probs: torch.Tensor | None = None
    correct: bool = False

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def select(self, idx: list[int]) -> UpdateBatch:
        t = torch.tensor(idx, dtype=torch.long)
        return UpdateBatch([self.prompt_ids[i] for i in idx], [self.response_ids[i] for i in idx],
                           self.loss_mask[t], None if self.old_log_probs is None else self.old_log_probs[t],
                           self.advantages[t],
                           None if self.ref_log_probs is None else self.ref_log_probs[t],
                           None if self.sampler_log_probs is None else self.sampler_log_probs[t], self.correct)


ADDITIVE = ("actor/pg_loss", "actor/kl_loss", "actor/entropy")


def lr_multiplier(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up over `warmup` optimizer steps, then constant / linear / cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule '{schedule}'; choose one of: constant, linear, cosine")


def apply_lora(model, lora: LoraConfig):
    """Wrap `model` with peft LoRA adapters (rank > 0); the frozen base doubles as the KL reference."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    return get_peft_model(model, PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))


def _swap(param: torch.Tensor, other: torch.Tensor) -> None:
    """Exchange two tensors' values. FSDP2 all-gathers from a shard's own storage, so DTensor shards are
    swapped in place (one temporary per parameter); plain tensors just trade storage."""
    if isinstance(param, DTensor):
        mine, theirs = param.to_local(), other.to_local()
        kept = mine.clone()
        mine.copy_(theirs)
        theirs.copy_(kept)
    else:
        param.data, other.data = other.data, param.data


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


def _micro_batches(prompt_ids: list[list[int]], response_ids: list[list[int]], size: int,
                   by_prompt: bool = False) -> list[list[int]]:
    """Row indices in micro-batches of at most `size`, longest rows first: a micro-batch is padded to its
    longest row, so rows of similar length together waste the least compute (the gradient is a sum over
    rows, so which rows share a micro-batch does not change it). `by_prompt` keeps the rows of a prompt
    next to each other (groups ordered by their longest row), so they can share its forward; every
    micro-batch but the last still has `size` rows, as ranks under FSDP must run the same number."""
    length = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    order = (_prompt_order(prompt_ids, length) if by_prompt else
             sorted(range(len(prompt_ids)), key=lambda i: -length[i]))
    return [order[s:s + size] for s in range(0, len(order), size)]


def _prompt_order(prompt_ids: list[list[int]], length: list[int]) -> list[int]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(tuple(p), []).append(i)
    members = sorted(groups.values(), key=lambda rows: -max(length[i] for i in rows))
    return [i for rows in members for i in sorted(rows, key=lambda i: -length[i])]


def _shared_micro_batches(prompt_ids: list[list[int]], response_ids: list[list[int]], size: int) -> list[list[int]]:
    """Micro-batches of at most `size` rows for the shared-prefix forward, cut to compute the fewest tokens.

    Rows are ordered as `by_prompt` orders them and cut into consecutive runs; a run costs its prompts
    once each (padded to the longest) plus every row padded to the run's longest remainder, plus one
    average row for the forward itself. A dynamic programme picks the cuts: a prompt whose rows differ
    widely in length is split, prompts of a few short rows are merged.
    """
    n = len(prompt_ids)
    length = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    order = _prompt_order(prompt_ids, length)
    ids: dict[tuple[int, ...], int] = {}
    group = [ids.setdefault(tuple(p), len(ids)) for p in prompt_ids]
    overhead = sum(length) / max(1, n)

    def runs_ending_at(j: int):
        groups: set[int] = set()
        prompt_w = rest_w = 0
        for i in range(j - 1, max(-1, j - 1 - size), -1):  # run order[i:j], grown backwards
            row = order[i]
            groups.add(group[row])
            prompt_w = max(prompt_w, len(prompt_ids[row]))
            rest_w = max(rest_w, len(response_ids[row]))
            yield i, len(groups) * prompt_w + (j - i) * rest_w + overhead

    return [[order[k] for k in run] for run in cheapest_runs(n, runs_ending_at)]


def _token_micro_batches(prompt_ids: list[list[int]], response_ids: list[list[int]], max_tokens: int,
                         shared: bool, by_prompt: bool) -> list[list[int]]:
    """Micro-batches of consecutive rows (ordered as `_micro_batches` orders them) whose forward computes at
    most `max_tokens` token positions (`forward_tokens`: padding included, shared prefixes once). A row
    longer than the budget goes alone (the config keeps budgets above the longest row)."""
    length = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    order = (_prompt_order(prompt_ids, length) if by_prompt else
             sorted(range(len(prompt_ids)), key=lambda i: -length[i]))
    runs: list[list[int]] = []
    for i in order:
        grown = runs[-1] + [i] if runs else None
        if grown and forward_tokens([prompt_ids[k] for k in grown], [response_ids[k] for k in grown],
                                    shared) <= max_tokens:
            runs[-1] = grown
        else:
            runs.append([i])
    return runs


def _split_to(runs: list[list[int]], count: int) -> list[list[int]]:
    """`runs` cut further, the largest first, into `count` micro-batches (ranks under FSDP must run as many
    forwards as each other; halves of a run fit its budget as long as their rows do)."""
    runs = list(runs)
    while len(runs) < count:
        k = max(range(len(runs)), key=lambda j: len(runs[j]))
        run = runs.pop(k)
        runs[k:k] = [run[:len(run) // 2], run[len(run) // 2:]]
    return runs


class Learner:
    """Owns the policy (optionally LoRA-wrapped), its frozen reference, AdamW and the LR schedule."""

    def __init__(self, model, actor: ActorConfig, model_cfg: ModelConfig, pad_id: int, device: str = "cpu",
                 total_optimizer_steps: int = 1, ref_model=None, temperature: float = 1.0):
        # An ActorConfig built alone (not through appo.config.resolve) gets the base algorithm's choices.
        actor = dataclasses.replace(actor, loss_agg_mode=actor.loss_agg_mode or "token-mean",
                                    ratio_level=actor.ratio_level or "token")
        self.actor, self.model_cfg = actor, model_cfg
        self._mismatch: list[dict[str, float]] = []
        self._measure_mismatch = False
        self.device = torch.device(device)
        self.pad_id = pad_id
        self.temperature = temperature
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        if model_cfg.lora.rank > 0 and not hasattr(model, "peft_config"):
            if model_cfg.gradient_checkpointing:
                model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
            model = apply_lora(model, model_cfg.lora)
        self.model = model.to(self.device)
        self.ref_model = ref_model.to(self.device).eval().requires_grad_(False) if ref_model is not None else None
        self.head = ResponseLogits(model.get_base_model() if self.is_lora else self.model)
        self.ref_head = ResponseLogits(self.ref_model) if self.ref_model is not None else None
        self.world = distributed.world_size()
        if self.world > 1:
            if self.is_lora:
                raise ValueError("LoRA (model.lora.rank > 0) runs in one process for now; set model.lora.rank=0 "
                                 "for a sharded full fine-tune")
            distributed.shard(self.head, self.model.get_decoder().layers, offload=actor.fsdp.param_offload)
            if self.ref_head is not None:
                distributed.shard(self.ref_head, self.ref_model.get_decoder().layers,
                                  offload=actor.fsdp.ref_param_offload)
        elif actor.fsdp.param_offload or actor.fsdp.ref_param_offload:
            log.warning("actor.fsdp.param_offload / ref_param_offload act under torchrun (FSDP2 shards); one "
                        "process keeps its model on %s", self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=actor.lr, betas=tuple(actor.betas),
                                           weight_decay=actor.weight_decay)
        self.total_optimizer_steps = max(1, total_optimizer_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, actor.warmup_steps, self.total_optimizer_steps,
                                                    actor.lr_schedule))
        self.skipped_steps = 0
        self.optimizer_steps = 0
        self.previous: list[torch.Tensor] | None = None  # trainable weights before the last update

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def has_reference(self) -> bool:
        return self.ref_model is not None or self.is_lora

    # ------------------------------------------------------------------------------------------ forward

    def _shares(self) -> bool:
        """Whether this forward shares prompts: checkpointed layers drop the cache when they keep a graph."""
        return self.actor.share_prompts and not (self.model_cfg.gradient_checkpointing and torch.is_grad_enabled())

    def _micro(self, prompt_ids, response_ids, size: int | None = None, tokens: int | None = None) -> list[list[int]]:
        """Micro-batches of row indices: of `size` rows, or with actor.use_dynamic_bsz of at most `tokens`."""
        if self.actor.use_dynamic_bsz and tokens:
            shares = self._shares()
            runs = _token_micro_batches(prompt_ids, response_ids, tokens, shared=shares, by_prompt=shares)
            if self.world > 1:  # every rank must run as many micro-batches as the others
                runs = _split_to(runs, int(distributed.max_all(len(runs))))
            return runs
        size = size or self.actor.micro_batch_size
        if not self._shares():
            return _micro_batches(prompt_ids, response_ids, size)
        if self.world > 1:  # every rank must run as many micro-batches as the others
            return _micro_batches(prompt_ids, response_ids, size, by_prompt=True)
        return _shared_micro_batches(prompt_ids, response_ids, size)

    def _forward(self, model, prompt_ids, response_ids, with_entropy: bool, autocast_dtype: str | None = None):
        head = self.ref_head if model is self.ref_model else self.head
        return response_log_probs(head, prompt_ids, response_ids, pad_id=self.pad_id, device=self.device,
                                  temperature=self.temperature, autocast_dtype=autocast_dtype or self.model_cfg.autocast,
                                  with_entropy=with_entropy, share_prompts=self._shares())

    @torch.no_grad()
    def log_probs(self, prompt_ids: list[list[int]], response_ids: list[list[int]], with_entropy: bool = False,
                  reference: bool = False, micro_batch_size: int | None = None, autocast_dtype: str | None = None):
        """Teacher-forced log-probs [rows, L] (and entropies) of the response tokens, micro-batched.
        `reference=True` scores with the frozen reference (LoRA: the base model with adapters disabled);
        `autocast_dtype` overrides model.autocast for this call ('none': float32)."""
        if reference and not self.has_reference:
            raise RuntimeError("no reference model: set actor.use_kl_loss=true or use LoRA")
        size = micro_batch_size or self.actor.micro_batch_size
        width = max(1, max(len(r) for r in response_ids))
        out_lp = torch.zeros(len(prompt_ids), width)
        out_ent = torch.zeros(len(prompt_ids), width) if with_entropy else None
        was_training = self.model.training
        self.model.eval()
        try:
            reference_model = self.ref_model if self.ref_model is not None else self.model
            with packed_linears(self.model), packed_linears(reference_model):
                for idx in self._micro(prompt_ids, response_ids, size, self._scoring_tokens(reference)):
                    p, r = [prompt_ids[i] for i in idx], [response_ids[i] for i in idx]
                    if reference and self.ref_model is not None:
                        lp, ent, _ = self._forward(self.ref_model, p, r, with_entropy, autocast_dtype)
                    elif reference:
                        with self.model.disable_adapter():
                            lp, ent, _ = self._forward(self.model, p, r, with_entropy, autocast_dtype)
                    else:
                        lp, ent, _ = self._forward(self.model, p, r, with_entropy, autocast_dtype)
                    at = torch.tensor(idx)
                    out_lp[at, : lp.shape[1]] = lp.cpu()
                    if with_entropy:
                        out_ent[at, : ent.shape[1]] = ent.cpu()
        finally:
            self.model.train(was_training)
        return out_lp, out_ent

    def _scoring_tokens(self, reference: bool) -> int:
        a = self.actor
        if reference and a.ref_log_prob_max_token_len_per_gpu:
            return a.ref_log_prob_max_token_len_per_gpu
        return a.log_prob_max_token_len_per_gpu

    def snapshot(self) -> None:
        """Keep a copy of the trainable weights as they are now (before an update): the previous policy
        that `fv_source=stale_policy` compares the current one with. Costs one copy of the trainable
        parameters (all weights for a full fine-tune, the adapters only with LoRA)."""
        self.previous = [p.detach().clone() for p in self.params]

    @contextlib.contextmanager
    def _previous_weights(self):
        """Swap the snapshot into the module for the duration (storage swaps; in place for FSDP2 shards)."""
        with torch.no_grad():
            for p, old in zip(self.params, self.previous, strict=True):
                _swap(p, old)
        forget_packed()  # a swap changes values behind the same parameter versions
        try:
            yield
        finally:
            with torch.no_grad():
                for p, old in zip(self.params, self.previous, strict=True):
                    _swap(p, old)
            forget_packed()

    @torch.no_grad()
    def previous_log_probs(self, prompt_ids: list[list[int]], response_ids: list[list[int]],
                           autocast_dtype: str | None = None) -> torch.Tensor | None:
        """Teacher-forced log-probs under the snapshot taken before the last update; None before the first."""
        if self.previous is None:
            return None
        with self._previous_weights():
            return self.log_probs(prompt_ids, response_ids, autocast_dtype=autocast_dtype)[0]

    # ------------------------------------------------------------------------------------------- update

    def _policy_loss(self, log_prob, old, adv, mask, normaliser, weights=None):
        a = self.actor
        if a.ratio_level == "sequence":
            return gspo_loss(log_prob, old, adv, mask, clip_low=a.sequence_clip_ratio_low,
                             clip_high=a.sequence_clip_ratio_high, agg=a.loss_agg_mode, normalizer=normaliser,
                             horizon=a.loss_horizon, weights=weights)
        common = dict(clip_low=a.clip_ratio_low, clip_high=a.clip_ratio_high, clip_c=a.clip_ratio_c,
                      agg=a.loss_agg_mode, normalizer=normaliser, horizon=a.loss_horizon, weights=weights)
        if a.loss_mode == "future_kl":
            f = a.future_kl
            return future_kl_loss(log_prob, old, adv, mask, decay_rate=f.decay_rate, fkl_clip=f.clip_ratio,
                                  fkl_clip_high_only=f.clip_high_only, fkl_weight=f.weight,
                                  safety_thresh=f.safety_thresh, **common)
        return ppo_loss(log_prob, old, adv, mask, **common)

    def single_step(self, rows: int) -> bool:
        """Whether an update of `rows` rows is one optimizer step (one epoch, one mini-batch): its forward
        then runs on the weights that sampled, and the PPO ratio's denominator is that forward's own value."""
        a = self.actor
        return a.ppo_epochs == 1 and (a.mini_batch_size == 0 or a.mini_batch_size // self.world >= rows)

    def update(self, batch: UpdateBatch) -> dict[str, float]:
        """`ppo_epochs` passes of mini-batches (in order, no shuffle: the reference's setting), one optimizer
        step each; returns the mean of each metric over optimizer steps. Under torchrun `batch` is this
        rank's rows and each rank trains on mini_batch_size / world of them per step (loss terms in the
        metrics are this rank's share: they add up over ranks)."""
        a = self.actor
        rows = len(batch)
        if rows == 0:
            return {}
        if batch.old_log_probs is None and not self.single_step(rows):
            raise ValueError("this update takes several optimizer steps, so it needs the batch's old log-probs")
        mini = a.mini_batch_size // self.world if a.mini_batch_size else rows
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def record(name, value):
            sums[name] = sums.get(name, 0.0) + float(value)
            counts[name] = counts.get(name, 0) + 1

        self.model.train()
        first_step = self.optimizer_steps
        self._mismatch = []  # the sampler/learner gap of each micro-batch, in the first epoch
        for epoch in range(a.ppo_epochs):
            self._measure_mismatch = epoch == 0
            for mini_idx in _chunks(rows, mini):
                mb = batch.select(mini_idx)
                normaliser = self._normaliser(mb, moved=self.optimizer_steps > first_step)
                self.optimizer.zero_grad(set_to_none=True)
                micro = [self._micro_step(mb.select(idx), normaliser)
                         for idx in self._micro(mb.prompt_ids, mb.response_ids, tokens=a.ppo_max_token_len_per_gpu)]
                for k in micro[0]:
                    values = [m[k] for m in micro]
                    # Loss terms are already mini-batch-normalised per micro-batch, so they add up.
                    record(k, sum(values) if k in ADDITIVE else sum(values) / len(values))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, a.grad_clip if a.grad_clip > 0 else
                                                           float("inf"))
                if isinstance(grad_norm, DTensor):  # the global norm, replicated: every rank skips alike
                    grad_norm = grad_norm.full_tensor()
                if not torch.isfinite(grad_norm):
                    # A non-finite gradient would poison AdamW's moments for good: skip, count, go on.
                    self.skipped_steps += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                record("actor/grad_norm", grad_norm)
                self._optimizer_step()
                self.scheduler.step()
                self.optimizer_steps += 1
        out = {k: sums[k] / counts[k] for k in sums}
        if self._mismatch:
            out.update({f"mismatch/{k}": v for k, v in mismatch_summary(self._mismatch).items()})
        out["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        out["actor/skipped_steps"] = float(self.skipped_steps)
        out["actor/optimizer_steps"] = float(self.optimizer_steps)
        return out

    def _optimizer_step(self) -> None:
        """AdamW's step; with actor.fsdp.optimizer_offload its moments come from CPU memory for the step and go
        back after it (with param_offload the step already runs on the CPU shards)."""
        offload = self.actor.fsdp.optimizer_offload and not self.actor.fsdp.param_offload
        if offload:
            self._move_optimizer_state(lambda p: p.device)
        self.optimizer.step()
        if offload:
            self._move_optimizer_state(lambda p: torch.device("cpu"))

    def _move_optimizer_state(self, where) -> None:
        for p, state in self.optimizer.state.items():
            for k, v in state.items():
                if torch.is_tensor(v) and v.dim() > 0:  # the moments; the step count stays where Adam keeps it
                    state[k] = v.to(where(p), non_blocking=True)

    def _normaliser(self, mb: UpdateBatch, moved: bool) -> float:
        """The mini-batch-wide denominator of the configured aggregation, summed over ranks. With the
        future_kl loss and `normaliser=kept` the sequences its filter drops leave the count, as in the
        reference; they can only be dropped once the policy has `moved` from the one that sampled them (at
        ratio 1 the dual clip is never active), so only then does this take a no-grad forward."""
        a = self.actor
        if a.loss_mode == "future_kl" and a.future_kl.normaliser == "kept" and moved:
            count = 0.0
            with torch.no_grad():
                for idx in self._micro(mb.prompt_ids, mb.response_ids, tokens=a.log_prob_max_token_len_per_gpu):
                    micro = mb.select(idx)
                    log_prob, _, _ = self._forward(self.model, micro.prompt_ids, micro.response_ids, False)
                    width = log_prob.shape[1]
                    _, metrics = self._policy_loss(log_prob, micro.old_log_probs[:, :width].to(self.device),
                                                   micro.advantages[:, :width].to(self.device),
                                                   micro.loss_mask[:, :width].to(self.device), None)
                    count += float(metrics["kept_count"])
        elif a.loss_agg_mode == "token-mean":
            count = float(mb.loss_mask.sum())
        else:
            count = float((mb.loss_mask.sum(-1) > 0).sum())
        return max(1.0, distributed.sum_all(count))

    def _micro_step(self, mb: UpdateBatch, normaliser: float) -> dict[str, float]:
        a = self.actor
        need_entropy = a.entropy_coeff != 0
        log_prob, entropy, _ = self._forward(self.model, mb.prompt_ids, mb.response_ids, need_entropy)
        width = log_prob.shape[1]
        mask = mb.loss_mask[:, :width].to(self.device)
        old = log_prob.detach() if mb.old_log_probs is None else mb.old_log_probs[:, :width].to(self.device)
        adv = mb.advantages[:, :width].to(self.device)
        weights = None
        if mb.sampler_log_probs is not None:  # `old` is the learner's at the weights that sampled
            rc = a.rollout_correction
            weights, gap = rollout_correction(old, mb.sampler_log_probs[:, :width].to(self.device), mask, rc.level,
                                              rc.method, rc.threshold)
            if self._measure_mismatch:
                self._mismatch.append({k: float(v) for k, v in gap.items()})
            if not mb.correct:
                weights = None
        loss, metrics = self._policy_loss(log_prob, old, adv, mask, normaliser, weights)
        metrics = {f"actor/{k}": float(v) for k, v in metrics.items() if k != "kept_count"}
        metrics["actor/pg_loss"] = float(loss.detach())
        if a.use_kl_loss and a.kl_loss_coef > 0:
            if mb.ref_log_probs is None:
                raise RuntimeError("actor.use_kl_loss=true but the batch has no reference log-probs")
            kl = kl_penalty(log_prob, mb.ref_log_probs[:, :width].to(self.device), kind=a.kl_loss_type)
            kl_loss = agg_loss(kl, mask, a.loss_agg_mode, normalizer=normaliser, horizon=a.loss_horizon)
            loss = loss + a.kl_loss_coef * kl_loss
            metrics["actor/kl_loss"] = float(kl_loss.detach())
        if need_entropy:
            ent_loss = agg_loss(entropy, mask, a.loss_agg_mode, normalizer=normaliser, horizon=a.loss_horizon)
            loss = loss - a.entropy_coeff * ent_loss
            metrics["actor/entropy"] = float(ent_loss.detach())
        # FSDP averages gradients over ranks; the normaliser is already global, so undo the average.
        (loss * self.world).backward()
        return metrics

    # ------------------------------------------------------------------------------------------ resume

    def state_dict(self) -> dict:
        """Everything `load_state_dict` needs. Sharded (torchrun): full, unsharded tensors, so every rank
        can restore from rank 0's file; collective, every rank calls it."""
        optimizer, previous = self.optimizer.state_dict(), self.previous
        if self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(self.head, self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            previous = [t.full_tensor().cpu() for t in previous] if previous is not None else None
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                "skipped_steps": self.skipped_steps, "optimizer_steps": self.optimizer_steps,
                "previous": previous, "world_size": self.world}

    def load_state_dict(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.world:
            raise ValueError(f"this checkpoint was written by {saved_world} process(es); resume it with the same "
                             f"number (now {self.world})")
        previous = state.get("previous")
        if self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            from torch.distributed.tensor import distribute_tensor

            self.previous = None if previous is None else [
                distribute_tensor(t.to(self.device), p.device_mesh, p.placements) for t, p in zip(previous, self.params)]
            set_optimizer_state_dict(self.head, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.previous = [t.to(self.device) for t in previous] if previous is not None else None
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = state["skipped_steps"]
        self.optimizer_steps = state["optimizer_steps"]
