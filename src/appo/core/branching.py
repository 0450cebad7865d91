"""Branching math: token entropy, future values, per-row z-scores, APPO branch-point selection, M, and
ARPO's entropy-triggered branching rule.

Shapes: ``[B, L]`` is rows x response positions. Masks are 0/1 (or bool) tensors; a position is valid
where the mask is non-zero. Statistics (means, stds) are accumulated in float64 so that groups of
identical values give exact zeros instead of float32 rounding noise divided by ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

EXP_CLAMP = 20.0  # exponents are clamped to [-20, 20] before exp, as in the reference


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Exact entropy −Σ p log p of the softmax over the last dimension (computed in at least float32)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    # entr(0) = 0, so tokens with -inf logits (masked vocabulary) contribute nothing instead of NaN.
    return torch.special.entr(torch.softmax(logits, dim=-1)).sum(dim=-1)


def entropy_from_topk(logprobs: torch.Tensor) -> torch.Tensor:
    """Truncated entropy −Σ p log p over the K log-probs of the last dimension, floored at 0.

    This is what a sampler that only returns its top-k log-probs can offer (the reference's branching
    entropy). ``-inf`` entries are padding for rows with fewer than K entries and add nothing.
    """
    logprobs = logprobs.float() if logprobs.dtype in (torch.float16, torch.bfloat16) else logprobs
    return torch.special.entr(torch.exp(logprobs)).sum(dim=-1).clamp(min=0.0)


def _default_chunk(length: int) -> int:
    # sqrt(L) balances the C x C in-block matrix against the (L/C) x (L/C) block-carry matrix.
    return max(16, math.ceil(math.sqrt(max(length, 1))))


def _powers(base: float, exponents: torch.Tensor) -> torch.Tensor:
    """base ** exponents in float64 (0 ** 0 = 1)."""
    return torch.pow(torch.tensor(base, dtype=torch.float64, device=exponents.device), exponents.double())


def _decay_matrix(size: int, base: float, device, dtype) -> torch.Tensor:
    """Upper-triangular D[i, j] = base^(j - i) for j >= i, else 0."""
    pos = torch.arange(size, device=device)
    distance = pos.unsqueeze(0) - pos.unsqueeze(1)
    return torch.where(distance >= 0, _powers(base, distance.clamp(min=0)), 0.0).to(dtype)


def discounted_future_sum(values: torch.Tensor, gamma: float, chunk_size: int | None = None) -> torch.Tensor:
    """y[..., t] = Σ_{k≥t} gamma^(k−t) · values[..., k] over the last dimension, without an L x L matrix.

    The sequence is cut into blocks of C positions. Inside a block one matmul against the C x C decay
    matrix gives the block-local suffix sums; the sums of later blocks reach earlier ones through the
    block starts, which obey the same recurrence with base gamma^C and are solved by one (L/C) x (L/C)
    matmul. Memory is O(B·L + C² + (L/C)²); the result is exact up to float rounding.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    length = values.shape[-1]
    if length == 0:
        return values.clone()
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = min(chunk_size or _default_chunk(length), length)
    n_blocks = -(-length // chunk)
    padded = torch.nn.functional.pad(values, (0, n_blocks * chunk - length))  # zeros add nothing
    blocks = padded.reshape(*values.shape[:-1], n_blocks, chunk)

    in_block = _decay_matrix(chunk, gamma, values.device, values.dtype)
    local = blocks @ in_block.transpose(0, 1)  # local[..., b, i] = Σ_{j≥i in block b} γ^(j−i) x_j
    block_starts = local[..., 0]  # [..., n_blocks]
    across = _decay_matrix(n_blocks, gamma**chunk, values.device, values.dtype)
    totals = block_starts @ across.transpose(0, 1)  # future sum from each block start to the end
    # The part beyond block b is totals[b + 1], reached from position i of block b after (C − i) steps.
    beyond = torch.nn.functional.pad(totals[..., 1:], (0, 1))
    reach = _powers(gamma, torch.arange(chunk, 0, -1, device=values.device)).to(values.dtype)
    out = local + beyond.unsqueeze(-1) * reach
    return out.reshape(*values.shape[:-1], n_blocks * chunk)[..., :length]


def future_values(log_ratio: torch.Tensor, mask: torch.Tensor, gamma: float,
                  clip_eps: float | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """FV_t = exp(clamp(Σ_{k≥t} γ^(k−t)·log_ratio_k·mask_k, −20, 20)), then clamped to [1−eps, 1+eps].

    The discount runs over absolute positions: masked positions add 0 but still count for distance.
    ``clip_eps`` of None or <= 0 disables the final clamp (the reference's ``if clip_eps > 0``).
    """
    valid = mask.bool()
    terms = torch.where(valid, log_ratio, torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device))
    future_log_ratio = discounted_future_sum(terms, gamma, chunk_size)
    fv = torch.exp(future_log_ratio.clamp(-EXP_CLAMP, EXP_CLAMP))
    if clip_eps is not None and clip_eps > 0:
        fv = fv.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return fv


def zscore(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row (v − mean)/(population std + eps) over the row's valid positions; 0 off-mask.

    A row with one valid position gets 0 there (std 0); a row with none is all zeros.
    """
    valid = mask.bool()
    v = torch.where(valid, values.double(), torch.zeros((), dtype=torch.float64, device=values.device))
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).double()
    mean = v.sum(dim=-1, keepdim=True) / count
    centred = torch.where(valid, v - mean, torch.zeros((), dtype=torch.float64, device=values.device))
    std = (centred.square().sum(dim=-1, keepdim=True) / count).sqrt()
    return (centred / (std + eps)).to(values.dtype)


def branching_scores(entropy: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, gamma: float,
                     clip_eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Branching score BS = Z(H)·Z(FV) per row over the valid (mask) positions.

    Returns ``(ez, fz, score)``, each ``[B, L]`` and 0 off-mask. Every valid position enters the
    statistics; which positions may become branch points is decided separately (``candidate_mask`` in
    :func:`select_branch_points`), so e.g. whitespace tokens shape the z-scores without being candidates.
    """
    fv = future_values(log_ratio, mask, gamma, clip_eps)
    ez = zscore(entropy, mask)
    fz = zscore(fv, mask)
    return ez, fz, ez * fz


def _ordered_desc(flat_scores: torch.Tensor, flat_index: torch.Tensor, limit: int) -> list[int]:
    """The first ``limit`` indices by score descending; ties keep the input (row-major) order."""
    order = torch.sort(flat_scores, descending=True, stable=True).indices[:limit]
    return flat_index[order].tolist()


def select_branch_points(score: torch.Tensor, ez: torch.Tensor, fz: torch.Tensor,
                         candidate_mask: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                         budget: int) -> list[tuple[int, int, float]]:
    """Pick ``budget`` branch points per group (prompt), pooling candidates over the group's rows.

    Order within a group:
    1. strict candidates (ez > 0 and fz > 0, hence score > 0) by score, highest first;
    2. if short, the other candidates by score, highest first, skipping points already taken;
    3. if still short, the chosen points repeated cyclically (each repeat is an independent sample).
    Ties are broken by row, then position. A product of two negative z-scores is not strict.
    ``candidate_mask`` marks the positions that may be chosen; it should lie inside the mask the
    z-scores were computed over.

    Returns ``(row, pos, score)`` tuples, groups in order of their first row holding a candidate, each
    group's points in selection order. A group with no candidate at all (e.g. every initial rollout
    empty) yields **no** points rather than failing: the caller sees fewer than ``budget`` points for
    it and must fill those rows itself (for example with fresh samples).
    """
    if budget <= 0:
        return []
    rows_total, length = score.shape
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != rows_total:
        raise ValueError(f"group_ids has {len(ids)} entries for {rows_total} rows")
    candidates = candidate_mask.bool()
    strict = candidates & (ez > 0) & (fz > 0) & (score > 0)
    groups: dict[Hashable, list[int]] = {}
    for row, gid in enumerate(ids):
        groups.setdefault(gid, []).append(row)
    # Groups are served in the order of their first row holding a candidate, like the reference.
    row_has_candidate = candidates.any(dim=-1).tolist()
    order = sorted(groups.values(),
                   key=lambda rows: next((r for r in rows if row_has_candidate[r]), rows_total))

    selected_all: list[tuple[int, int, float]] = []
    for rows in order:
        row_index = torch.tensor(rows, dtype=torch.long, device=score.device)
        flat_index = (row_index.unsqueeze(1) * length + torch.arange(length, device=score.device)).reshape(-1)
        flat_score = score[row_index].reshape(-1)
        flat_cand = candidates[row_index].reshape(-1)
        flat_strict = strict[row_index].reshape(-1)
        if not bool(flat_cand.any()):
            continue
        chosen = _ordered_desc(flat_score[flat_strict], flat_index[flat_strict], budget)
        if len(chosen) < budget:
            taken = set(chosen)
            # the taken points are candidates too, so the best `budget` candidates hold enough new ones
            for idx in _ordered_desc(flat_score[flat_cand], flat_index[flat_cand], budget):
                if idx not in taken:
                    chosen.append(idx)
                    taken.add(idx)
                    if len(chosen) == budget:
                        break
        distinct = len(chosen)
        chosen += [chosen[i % distinct] for i in range(budget - distinct)]
        flat_all = score.reshape(-1)
        selected_all += [(idx // length, idx % length, float(flat_all[idx])) for idx in chosen]
    return selected_all


def reward_scale_m(split_pos: int, score: float, max_score: float, length: int,
                   discount: float) -> torch.Tensor:
    """The reference's reward scale M of one branch: ``M[t] = 1 + (s/s_max)·discount^(b−t)`` for t ≤ b.

    All ones when ``score <= 0`` or ``max_score <= 0``; positions after the split point stay 1.
    """
    m = torch.ones(length, dtype=torch.float32)
    if max_score <= 0 or score <= 0:
        return m
    end = min(split_pos + 1, length)
    if end <= 0:
        return m
    distance = torch.arange(split_pos, split_pos - end, -1)
    m[:end] = (1.0 + (score / max_score) * _powers(discount, distance)).float()
    return m


def mean_reward_scale_m(branches: Sequence[tuple[int, float]], max_score: float, length: int,
                        discount: float) -> torch.Tensor:
    """Average of :func:`reward_scale_m` over an initial row's branches ``(split_pos, score)``.

    The reference multiplies the row's token rewards by this vector; with no branches it is all ones.
    """
    if not branches:
        return torch.ones(length, dtype=torch.float32)
    return torch.stack([reward_scale_m(b, s, max_score, length, discount) for b, s in branches]).mean(dim=0)


# ------------------------------------------------------------------------- ARPO's branching rule


def arpo_step_entropy(topk_logprobs: torch.Tensor, vocab_size: int, max_tokens: int = 20) -> float:
    """ARPO's step entropy of one generation round: ``Σ_t H_topk(t) / ln|V|`` over its first tokens.

    ``topk_logprobs`` is ``[T, K]`` (the round's per-token top-k log-probs, ``-inf`` padded). Only the
    first ``max_tokens`` tokens count and the per-token truncated entropies are **summed**, not
    averaged, so the value grows with the round length up to ``max_tokens`` (as in the reference).
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    head = topk_logprobs[:max_tokens]
    if head.numel() == 0:
        return 0.0
    return float(entropy_from_topk(head).sum()) / math.log(vocab_size)


def arpo_branch_decision(u: float, h_now: float, h_init: float, weight: float,
                         threshold: float) -> tuple[bool, float]:
    """ARPO's entropy-adaptive branching rule for one candidate copy.

    ``prob = clip(u − weight·(h_now − h_init), 0, 1)`` with ``u ~ U(0, 1)`` drawn by the caller;
    branch iff ``prob <= threshold``. Rising entropy lowers ``prob`` and so makes branching likelier.
    """
    prob = min(1.0, max(0.0, u - weight * (h_now - h_init)))
    return prob <= threshold, prob
