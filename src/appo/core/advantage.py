"""Advantage estimators: GRPO (verl; also what ARPO trains with) and APPO (two groups per prompt + prefix credit).

Group statistics are accumulated in float64: a group of identical scores then gets exactly zero
advantage instead of float32 rounding noise divided by ``eps``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def _group_index(group_ids: Sequence[Hashable] | torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """Dense 0..G-1 index per row, groups numbered in order of first appearance."""
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != rows:
        raise ValueError(f"group_ids has {len(ids)} entries for {rows} rows")
    dense: dict[Hashable, int] = {}
    index = [dense.setdefault(gid, len(dense)) for gid in ids]
    return torch.tensor(index, dtype=torch.long), len(dense)


def _group_stats(scores: torch.Tensor, index: torch.Tensor, n_groups: int,
                 unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (group mean, group std, group size), scores in float64."""
    index = index.to(scores.device)
    count = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(
        0, index, torch.ones_like(scores))
    total = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(0, index, scores)
    mean = (total / count)[index]
    sq = torch.zeros(n_groups, dtype=torch.float64, device=scores.device).index_add_(
        0, index, (scores - mean).square())
    dof = (count - 1).clamp(min=1) if unbiased else count
    std = (sq / dof).sqrt()[index]
    return mean, std, count[index]


def grpo_advantages(scores: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                    response_mask: torch.Tensor, eps: float = 1e-6, norm_by_std: bool = True,
                    unbiased_std: bool = True) -> torch.Tensor:
    """verl's GRPO outcome advantage, broadcast over the response: ``[B, L]``.

    ``(s − mean_G)/(std_G + eps)`` per group G of rows sharing a prompt, with the unbiased std by
    default; ``norm_by_std=False`` only centres (Dr. GRPO). A singleton group uses mean 0 and std 1,
    i.e. ``s/(1 + eps)`` (``s`` without std normalisation), exactly as verl does.
    """
    index, n_groups = _group_index(group_ids, scores.shape[0])
    s = scores.double()
    mean, std, count = _group_stats(s, index, n_groups, unbiased_std)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    base = (s - mean) / (std + eps) if norm_by_std else s - mean
    return base.to(response_mask.dtype if response_mask.is_floating_point() else torch.float32
                   ).unsqueeze(-1) * response_mask


def appo_advantages(scores: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                    is_branch: torch.Tensor, response_mask: torch.Tensor,
                    splits: Sequence[tuple[int, int, int]], eps: float = 1e-6,
                    norm_by_std: bool = True) -> torch.Tensor:
    """APPO's two-group advantage with branch credit mapped onto the initial rows' prefixes: ``[B, L]``.

    * ``base_i = (s_i − mean)/(population std + eps)`` within (prompt, kind), kind = init or branch;
      ``norm_by_std=False`` only centres. A singleton group gets 0.
    * Initial row o at position t: ``base_o`` plus the mean of ``base_j`` over its branches j (from
      ``splits`` = ``(init_row, branch_row, split_pos)``) with ``split_pos >= t``, averaging only where
      ``response_mask[o, t]`` is 1; positions after its deepest split get ``base_o`` alone.
    * Branch rows get 0 everywhere; the result is multiplied by ``response_mask``.

    As in the reference, split entries that do not link an initial row to a branch row (or have a
    negative split position) are ignored; split positions past the response end cover the whole row.
    """
    rows, length = response_mask.shape
    branch = is_branch.bool().to(scores.device)
    index, n_groups = _group_index(group_ids, rows)
    keyed = index.to(scores.device) * 2 + branch.long()
    s = scores.double()
    mean, std, _ = _group_stats(s, keyed, 2 * n_groups, unbiased=False)
    base = (s - mean) / (std + eps) if norm_by_std else s - mean

    mask = response_mask.double()
    adv = torch.where(branch.unsqueeze(-1), torch.zeros_like(mask), base.unsqueeze(-1) * mask)
    kept = [(o, b, p) for o, b, p in splits
            if 0 <= o < rows and 0 <= b < rows and p >= 0 and not bool(branch[o]) and bool(branch[b])]
    if kept:
        origin, branch_row, split_pos = (torch.tensor(col, dtype=torch.long, device=scores.device)
                                         for col in zip(*kept, strict=True))
        covers = torch.arange(length, device=scores.device).unsqueeze(0) <= split_pos.unsqueeze(1)
        weight = covers.double() * mask[origin]  # [S, L]: where each branch adds credit on its origin row
        aux_sum = torch.zeros_like(mask).index_add_(0, origin, weight * base[branch_row].unsqueeze(1))
        aux_count = torch.zeros_like(mask).index_add_(0, origin, weight)
        adv = torch.where(aux_count > 0, adv + aux_sum / aux_count.clamp(min=1.0), adv)
    out_dtype = response_mask.dtype if response_mask.is_floating_point() else torch.float32
    return (adv * mask).to(out_dtype)


def rloo_advantages(scores: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                    response_mask: torch.Tensor) -> torch.Tensor:
    """RLOO's leave-one-out advantage (Ahmadian et al. 2024), broadcast over the response: ``[B, L]``.

    ``A_i = s_i − (1/(k−1))·Σ_{j≠i} s_j = k/(k−1)·(s_i − mean_G)`` for a group of k rows; a singleton group
    has no other sample to compare with and gets 0.
    """
    index, n_groups = _group_index(group_ids, scores.shape[0])
    s = scores.double()
    mean, _, count = _group_stats(s, index, n_groups, unbiased=False)
    base = torch.where(count > 1, (s - mean) * count / (count - 1).clamp(min=1), torch.zeros_like(s))
    return base.to(response_mask.dtype if response_mask.is_floating_point() else torch.float32
                   ).unsqueeze(-1) * response_mask


def overlong_penalty(length: int, max_length: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) added to the reward of a response of
    `length` tokens: 0 up to ``max_length − buffer``, then falling linearly to ``−factor`` at
    ``max_length`` (and ``−factor`` beyond it)."""
    if buffer <= 0:
        return 0.0
    start = max_length - buffer
    if length <= start:
        return 0.0
    return -factor * min(1.0, (length - start) / buffer)


def all_equal_groups(scores: Sequence[float], group_ids: Sequence[Hashable]) -> set[Hashable]:
    """The groups whose scores are all equal (DAPO's dynamic sampling drops them: their GRPO advantage is 0)."""
    seen: dict[Hashable, set[float]] = {}
    for s, g in zip(scores, group_ids, strict=True):
        seen.setdefault(g, set()).add(float(s))
    return {g for g, values in seen.items() if len(values) == 1}
