"""Policy losses: dual-clip PPO, future-KL (FIPO) re-weighting, KL penalties, and loss aggregation.

Every loss returns ``(loss, metrics)``; metrics are detached 0-dim tensors (no device sync) named
without a prefix, e.g. ``pg_clipfrac``. Gradients flow only through ``log_prob``: the old log-probs,
the advantages and the future-KL influence are constants of the update.
"""

from __future__ import annotations

import math

import torch

from appo.core.branching import EXP_CLAMP, discounted_future_sum

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
LOW_VAR_KL_CLAMP = 10.0
SAFETY_F_RANGE = (0.8, 1.0)  # influence range where A < 0 and the ratio exceeds safety_thresh
UNCLIPPED_F_MAX = 10.0  # influence cap when fkl_clip <= 0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / (mask.sum() + 1e-8)


def agg_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
             normalizer: float | torch.Tensor | None = None, horizon: int | None = None) -> torch.Tensor:
    """Reduce a ``[B, L]`` loss matrix to a scalar over the masked positions.

    * ``token-mean``: Σ loss·mask / (Σ mask + 1e-8).
    * ``seq-mean-token-sum``: mean over sequences with any valid token of Σ_t loss·mask.
    * ``seq-mean-token-mean``: mean over those sequences of their own token-mean.
    * ``seq-mean-token-sum-norm`` (Dr. GRPO): ``seq-mean-token-sum`` divided by the constant ``horizon``
      (the response budget) instead of each sequence's own length, so long and short responses weigh
      their tokens alike.

    ``normalizer`` replaces the local count (tokens for ``token-mean``, sequences with a valid token
    for the seq modes) by a global one, so that a mini-batch split into micro-batches can be
    aggregated exactly: pass the mini-batch's count to every micro-batch call and the sum of the
    micro-batch losses equals the loss of the whole mini-batch.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; choose one of {', '.join(AGG_MODES)}")
    valid = mask.bool()
    weights = mask.to(loss_mat.dtype)
    masked = torch.where(valid, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    if mode == "token-mean":
        total = (masked * weights).sum()
        count = weights.sum() if normalizer is None else normalizer
        return total / (count + 1e-8)
    tokens = weights.sum(dim=-1)
    seq_loss = (masked * weights).sum(dim=-1)
    if mode == "seq-mean-token-mean":
        seq_loss = seq_loss / tokens.clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        if not horizon or horizon <= 0:
            raise ValueError("loss aggregation seq-mean-token-sum-norm needs a positive horizon (the response budget)")
        seq_loss = seq_loss / horizon
    has_tokens = tokens > 0
    total = torch.where(has_tokens, seq_loss, torch.zeros_like(seq_loss)).sum()
    if normalizer is None:
        # An all-masked batch returns 0 that still depends on loss_mat, so backward() keeps working.
        return total / has_tokens.sum() if bool(has_tokens.any()) else seq_loss.sum() * 0.0
    return total / normalizer if float(normalizer) > 0 else total * 0.0


def _dual_clip(weighted_adv: torch.Tensor, sign_adv: torch.Tensor, ratio: torch.Tensor, clip_low: float,
               clip_high: float, clip_c: float) -> dict[str, torch.Tensor]:
    """Dual-clip PPO terms on the (possibly re-weighted) advantage."""
    loss_unclipped = -weighted_adv * ratio
    loss_clipped = -weighted_adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip1 = torch.maximum(loss_unclipped, loss_clipped)
    loss_dual = -weighted_adv * clip_c
    clip2 = torch.minimum(loss_dual, clip1)
    return {
        "per_token": torch.where(weighted_adv < 0, clip2, clip1),
        "clipped": torch.gt(loss_clipped, loss_unclipped),
        "dual_clipped": torch.gt(clip1, loss_dual) & (sign_adv < 0),
    }


def _check_clip_c(clip_c: float) -> None:
    if clip_c <= 1.0:
        raise ValueError(f"clip_c must be > 1 for dual-clip PPO, got {clip_c}")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def ppo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
             clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float = 3.0, agg: str = "token-mean",
             normalizer: float | torch.Tensor | None = None, horizon: int | None = None,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Vanilla dual-clip PPO (verl ``compute_policy_loss``), no sequence filter.

    ``ratio = exp(log_prob − old_log_prob)`` with the log-ratio clamped to ±20 (the reference leaves it
    unclamped; the two differ only where it would overflow). Per token: ``max(−A·r, −A·clip(r, 1−low,
    1+high))``, and for A < 0 additionally ``min(·, −A·c)``, times the rollout correction's constant
    ``weights`` when given (:func:`rollout_correction`). Metrics: ``pg_clipfrac``, ``pg_clipfrac_lower``
    (dual-clip active), ``ppo_kl`` (masked mean of −log-ratio).
    """
    _check_clip_c(clip_c)
    log_prob = _as_float(log_prob)
    old = _as_float(old_log_prob).detach().to(log_prob.dtype)
    adv = advantages.detach().to(log_prob.dtype)
    valid = mask.to(log_prob.dtype)
    log_ratio = torch.clamp(log_prob - old, -EXP_CLAMP, EXP_CLAMP)
    ratio = torch.exp(log_ratio)
    terms = _dual_clip(adv, adv, ratio, clip_low, clip_high, clip_c)
    per_token = terms["per_token"] if weights is None else terms["per_token"] * weights.detach().to(log_prob.dtype)
    loss = agg_loss(per_token, mask, agg, normalizer, horizon)
    metrics = {
        "pg_clipfrac": _masked_mean(terms["clipped"].to(valid.dtype), valid).detach(),
        "pg_clipfrac_lower": _masked_mean(terms["dual_clipped"].to(valid.dtype), valid).detach(),
        "ppo_kl": _masked_mean(-log_ratio, valid).detach(),
    }
    return loss, metrics


def sequence_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: the length-normalised sequence log-ratio ``(1/|y|)·Σ_t (log π − log π_old)`` over the masked
    tokens (0 for a sequence without one), clamped to ±20: GSPO's ``log s_i``."""
    valid = mask.to(log_prob.dtype)
    total = ((log_prob - old_log_prob) * valid).sum(dim=-1)
    return torch.clamp(total / valid.sum(dim=-1).clamp(min=1), -EXP_CLAMP, EXP_CLAMP)


def gspo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_low: float = 3e-4, clip_high: float = 4e-4, agg: str = "seq-mean-token-mean",
              normalizer: float | torch.Tensor | None = None, horizon: int | None = None,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped objective (Zheng et al. 2025), in its GSPO-token form.

    ``s_i = exp((1/|y_i|)·Σ_t log(π/π_old))``; per token ``s_{i,t} = sg[s_i]·π_t/sg[π_t]`` (equal to s_i
    in value, its gradient that of log π_t scaled by s_i) and the loss ``max(−A_t·s_{i,t},
    −A_t·clip(s_{i,t}, 1−low, 1+high))``. With one advantage per sequence and ``seq-mean-token-mean``
    this is GSPO's objective and gradient exactly; per-token advantages (APPO's prefix credit) are what
    GSPO-token allows. No dual clip: the sequence ratio is bounded by the clip already. Metrics:
    ``pg_clipfrac`` (share of sequences clipped, over those with a token) and ``ppo_kl``.
    """
    log_prob = _as_float(log_prob)
    old = _as_float(old_log_prob).detach().to(log_prob.dtype)
    adv = advantages.detach().to(log_prob.dtype)
    valid = mask.to(log_prob.dtype)
    seq = sequence_log_ratio(log_prob.detach(), old, mask)
    ratio = torch.exp(seq.unsqueeze(-1) + log_prob - log_prob.detach())
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.detach().to(log_prob.dtype)
    loss = agg_loss(per_token, mask, agg, normalizer, horizon)
    has_tokens = valid.sum(dim=-1) > 0
    seq_clipped = ((clipped > unclipped) & mask.bool()).any(dim=-1) & has_tokens
    metrics = {
        "pg_clipfrac": (seq_clipped.sum() / has_tokens.sum().clamp(min=1)).to(valid.dtype).detach(),
        "ppo_kl": _masked_mean(-(log_prob.detach() - old), valid).detach(),
    }
    return loss, metrics


def rollout_correction(learner_log_prob: torch.Tensor, sampler_log_prob: torch.Tensor, mask: torch.Tensor,
                       level: str = "token", method: str = "truncate",
                       threshold: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Importance weights for the gap between the sampler's and the learner's probabilities of the same
    tokens at the same weights (a vLLM or bf16 sampler against the learner's forward): ``[B, L]`` constants.

    ``ρ_t = π_learner(y_t)/π_sampler(y_t)`` per token, or per sequence its length-normalised (geometric
    mean) ``exp((1/|y|)·Σ_t log ρ_t)`` broadcast over the sequence. ``truncate`` weights by
    ``min(ρ, threshold)`` (truncated importance sampling, TIS); ``mask`` weights by 1 where
    ``1/threshold <= ρ <= threshold`` and 0 elsewhere (IcePop-style masking). Metrics are sums over the
    masked tokens, so that micro-batches add up (:func:`mismatch_summary`): ``abs_diff_sum``,
    ``abs_diff_max``, ``tokens``, ``over`` (tokens with ρ > threshold: what truncation caps),
    ``outside`` (ρ outside [1/threshold, threshold]: what masking drops) and the sequence ratios
    ``seq_ratio_sum``, ``seq_ratio_sq_sum``, ``seq_ratio_min``, ``seq_ratio_max``, ``sequences``.
    """
    valid = mask.bool()
    lp = _as_float(learner_log_prob).detach()
    delta = torch.where(valid, lp - _as_float(sampler_log_prob).to(lp.dtype), torch.zeros_like(lp))
    delta = torch.clamp(delta, -EXP_CLAMP, EXP_CLAMP)
    seq_log = sequence_log_ratio(delta, torch.zeros_like(delta), mask)
    rho = torch.exp(delta) if level == "token" else torch.exp(seq_log).unsqueeze(-1).expand_as(delta)
    if method == "truncate":
        weights = torch.clamp(rho, max=threshold)
    elif method == "mask":
        weights = ((rho <= threshold) & (rho >= 1.0 / threshold)).to(lp.dtype)
    else:
        raise ValueError(f"unknown rollout correction method {method!r}; choose one of: truncate, mask")
    has_tokens = valid.any(dim=-1)
    seq_ratio = torch.exp(seq_log.double())[has_tokens]  # float64: the spread is a difference of sums
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    metrics = {
        "abs_diff_sum": delta.abs().sum(), "abs_diff_max": delta.abs().max() if delta.numel() else zero,
        "tokens": valid.sum().to(lp.dtype), "over": ((rho > threshold) & valid).sum().to(lp.dtype),
        "outside": (((rho > threshold) | (rho < 1.0 / threshold)) & valid).sum().to(lp.dtype),
        "seq_ratio_sum": seq_ratio.sum(), "seq_ratio_sq_sum": seq_ratio.square().sum(),
        "seq_ratio_min": seq_ratio.min() if seq_ratio.numel() else torch.tensor(math.inf),
        "seq_ratio_max": seq_ratio.max() if seq_ratio.numel() else torch.tensor(-math.inf),
        "sequences": has_tokens.sum().to(lp.dtype),
    }
    return torch.where(valid, weights, torch.zeros_like(weights)), metrics


def mismatch_summary(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine :func:`rollout_correction`'s per-batch sums into the logged statistics: mean and max
    |Δ log p| per token, the share of tokens truncation caps and masking drops, and the sequence ratio's
    spread (min, max, std)."""
    total = {k: sum(p[k] for p in parts) for k in ("abs_diff_sum", "tokens", "over", "outside", "seq_ratio_sum",
                                                  "seq_ratio_sq_sum", "sequences")}
    tokens, seqs = max(total["tokens"], 1.0), max(total["sequences"], 1.0)
    mean = total["seq_ratio_sum"] / seqs
    return {
        "abs_logp_diff_mean": total["abs_diff_sum"] / tokens,
        "abs_logp_diff_max": max(p["abs_diff_max"] for p in parts),
        "truncated_frac": total["over"] / tokens, "masked_frac": total["outside"] / tokens,
        "seq_ratio_min": min(p["seq_ratio_min"] for p in parts) if total["sequences"] else 1.0,
        "seq_ratio_max": max(p["seq_ratio_max"] for p in parts) if total["sequences"] else 1.0,
        "seq_ratio_std": math.sqrt(max(0.0, total["seq_ratio_sq_sum"] / seqs - mean * mean)),
    }


def future_kl_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.28, clip_c: float = 3.0,
                   decay_rate: float = 64.0, fkl_clip: float = 0.2, fkl_clip_high_only: bool = True,
                   fkl_weight: float = 1.0, safety_thresh: float = 6.0, agg: str = "token-mean",
                   normalizer: float | torch.Tensor | None = None,
                   chunk_size: int | None = None, horizon: int | None = None,
                   weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Future-KL (FIPO) policy loss: dual-clip PPO on ``A·(1 + fkl_weight·f)``.

    1. ``Δ = clamp(log_prob − old_log_prob, ±20)``, ``r = exp(Δ)``.
    2. ``FK_t = Σ_{k≥t} γ^(k−t)·Δ_k·mask_k·[Δ_k ≤ ln c]`` with ``γ = 2^(−1/decay_rate)`` (computed in
       blocks, never as an L x L matrix; ``chunk_size`` only changes rounding).
    3. ``f = clamp(exp(FK), lo, 1+fkl_clip)`` with ``lo = 1`` if ``fkl_clip_high_only`` else
       ``1−fkl_clip``; ``fkl_clip <= 0`` gives ``min(exp(FK), 10)``. Where A < 0 and
       ``r > safety_thresh``, f is clamped to [0.8, 1]. f is a constant (no gradient).
    4. Dual-clip PPO on the re-weighted advantage; then every sequence with **more than one** masked
       token where A < 0 and the dual clip is active is dropped from the loss.

    Without a ``normalizer`` the local count excludes the dropped sequences, as in the reference; a global
    one (see :func:`agg_loss`) is the caller's: ``kept_count`` in the metrics is this batch's share of the
    reference's denominator (tokens, or sequences, outside the dropped sequences).
    Metrics: ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl``, ``fkl_influence_mean`` (masked mean of
    f), ``fkl_influence_clipfrac`` (share of masked tokens with f at either bound) and
    ``fkl_filtered_frac`` (dropped sequences / sequences with a masked token).
    """
    _check_clip_c(clip_c)
    if decay_rate <= 0:
        raise ValueError(f"decay_rate must be > 0, got {decay_rate}")
    log_prob = _as_float(log_prob)
    old = _as_float(old_log_prob).detach().to(log_prob.dtype)
    adv = advantages.detach().to(log_prob.dtype)
    valid = mask.bool()
    weights = mask.to(log_prob.dtype)

    log_ratio = torch.clamp(log_prob - old, -EXP_CLAMP, EXP_CLAMP)
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        delta = log_ratio.detach()
        participates = valid & (delta <= math.log(clip_c))
        future_kl = discounted_future_sum(torch.where(participates, delta, torch.zeros_like(delta)),
                                          2.0 ** (-1.0 / decay_rate), chunk_size)
        raw = torch.exp(future_kl)
        if fkl_clip > 0:
            low, high = (1.0 if fkl_clip_high_only else 1.0 - fkl_clip), 1.0 + fkl_clip
            influence = raw.clamp(low, high)
        else:
            low, high = 0.0, UNCLIPPED_F_MAX
            influence = raw.clamp(max=high)
        capped = (adv < 0) & (ratio.detach() > safety_thresh)
        influence = torch.where(capped, influence.clamp(*SAFETY_F_RANGE), influence)
        weighted_adv = adv * (1.0 + fkl_weight * influence)

    terms = _dual_clip(weighted_adv, adv, ratio, clip_low, clip_high, clip_c)
    if weights is not None:
        terms["per_token"] = terms["per_token"] * weights.detach().to(log_prob.dtype)
    dual_per_seq = (terms["dual_clipped"] & valid).sum(dim=-1)
    dropped = dual_per_seq > 1
    final_mask = valid & ~dropped.unsqueeze(-1)
    loss = agg_loss(terms["per_token"], final_mask, agg, normalizer, horizon)

    at_bound = (influence >= high - 1e-7) | (influence <= low + 1e-7)
    has_tokens = valid.any(dim=-1)
    metrics = {
        "pg_clipfrac": _masked_mean(terms["clipped"].to(weights.dtype), weights).detach(),
        "pg_clipfrac_lower": _masked_mean(terms["dual_clipped"].to(weights.dtype), weights).detach(),
        "ppo_kl": _masked_mean(-log_ratio, weights).detach(),
        "fkl_influence_mean": _masked_mean(influence, weights),
        "fkl_influence_clipfrac": _masked_mean(at_bound.to(weights.dtype), weights),
        "fkl_filtered_frac": (dropped & has_tokens).sum().to(weights.dtype)
        / has_tokens.sum().clamp(min=1).to(weights.dtype),
        "kept_count": (final_mask.sum() if agg == "token-mean" else final_mask.any(dim=-1).sum()).to(weights.dtype),
    }
    return loss, metrics


def kl_penalty(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference model, ``[B, L]``.

    ``kl``/``k1``: log π − log π_ref; ``abs``: its absolute value; ``mse``/``k2``: ½(log π − log π_ref)²;
    ``low_var_kl``/``k3``: ``e^κ − κ − 1`` with κ = log π_ref − log π, clamped to [−10, 10]. κ is
    clamped to ±20 first: the value is the same (it saturates the clamp either way), but the gradient
    stays finite where exp would overflow.
    """
    diff = log_prob - ref_log_prob
    if kind in ("kl", "k1"):
        return diff
    if kind == "abs":
        return diff.abs()
    if kind in ("mse", "k2"):
        return 0.5 * diff.square()
    if kind in ("low_var_kl", "k3"):
        kappa = torch.clamp(-diff, -EXP_CLAMP, EXP_CLAMP)
        return torch.clamp(torch.exp(kappa) - kappa - 1, -LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)
    raise ValueError(f"unknown KL kind {kind!r}; choose one of {', '.join(KL_KINDS)}")
