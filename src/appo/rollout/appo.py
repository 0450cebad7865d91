"""APPO sampling (docs/reference-differences.md#s4): m initial rollouts per prompt, Branching Scores
Z(entropy)·Z(future value) on every generated token, and n − m continuations from the top-scored prefixes
with the same tool loop.

The rest of APPO: the advantage that maps branch outcomes back onto the parents' prefixes is
`appo.core.advantage.appo_advantages`; the trainer drops the branch rows before the update
(`algorithm.drop_branch_rows`), and `actor.loss_mode=future_kl` is `appo.core.loss.future_kl_loss`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from appo.core.branching import branching_scores, entropy_from_topk, select_branch_points
from appo.rollout.tool_loop import KeptCaches, LoopStart, RolloutLoopSettings, ToolLoop
from appo.rollout.trajectory import RolloutGroup, Trajectory
from appo.seeding import derive_seed

log = logging.getLogger(__name__)

@dataclass
class InitScores:
    """What APPO's branching needs recomputed for the initial rows, from one teacher-forced forward."""
    log_ratio: list[list[float]] | None          # the future value's log-ratio per token; None: entropy only
    entropies: list[list[float]] | None = None   # exact full-vocabulary entropies (engines with top-k ones)


# (initial rows, whether exact entropies are needed) -> their scores; see `init_scorer`.
ScoreInits = Callable[[list[Trajectory], bool], InitScores]
# Teacher-forced log-probs of each row's response tokens (and entropies, when asked).
Recompute = Callable[[list[Trajectory], bool], tuple[list[list[float]], list[list[float]] | None]]


def appo_rollouts(engine, tools, prompts, cfg, step: int, stats: dict,
                  score_inits: ScoreInits | None = None, first_group: int = 0,
                  on_done=None) -> list[RolloutGroup]:
    """m initial rollouts per prompt, then n - m continuations from the best-scored decision points.

    Per prompt, once its m initial rows are done: score every generated token of them
    (`choose_branch_points`: entropy x future value, z-scored per row) and pick `budget` points;
    `score_inits` supplies the future value's log-ratio and, for an engine whose entropies are top-k
    truncated (vLLM), the exact ones from the same forward. Each chosen prefix is then continued with the
    same tool loop (branches may call tools); a prompt with no candidate at all gets fresh rows instead,
    so every prompt ends with exactly n rows.

    The branches of a prompt join the running loop while other prompts' initial rows are still decoding,
    so the batch stays full instead of draining to the slowest initial row before any branch starts.
    Scores are z-scored per row and points picked per prompt, and every row's seed derives from
    (step, prompt, index), so the rows are the same as scoring all prompts at once after all initial
    rollouts (`test_branching_one_prompt_at_a_time_picks_what_all_at_once_picks`).
    """
    r, a = cfg.rollout, cfg.rollout.appo
    m, budget, seed = r.initial_rollouts, r.n - r.initial_rollouts, r.seed
    topk = a.entropy_topk if a.entropy_source == "topk" else 0
    t0 = time.perf_counter()
    stats["fv_seconds"] = stats["select_seconds"] = 0.0
    branches_from: list[float] = []  # when the first branch was added
    kept = KeptCaches() if budget > 0 else None  # the initial rollouts' KV caches, for the branches to start from
    starts = [LoopStart.fresh(p.prompt_ids, group=g, seed=derive_seed(seed, step, first_group + g, "init", j),
                              keep_top_logprobs=topk > 0, row=p)
              for g, p in enumerate(prompts) for j in range(m)]
    inits = [s.trajectory for s in starts]
    groups = [RolloutGroup(p, inits=inits[g * m:(g + 1) * m]) for g, p in enumerate(prompts)]
    left = [m] * len(prompts)  # initial rows still running, per prompt
    eos_ids = set(getattr(engine, "eos_ids", None) or {engine.tokenizer.eos_token_id})
    need_entropy = a.entropy_source == "full" and not getattr(engine, "exact_entropy", True)
    if score_inits is None and (a.fv_source != "none" or need_entropy) and budget > 0:
        log.warning("APPO's branching needs the initial rows rescored (rollout.appo.fv_source=%s, exact "
                    "entropies: %s) but no scorer was given; ranking by the engine's entropy only",
                    a.fv_source, need_entropy)

    def branch_out(g: int) -> None:
        group_inits = inits[g * m:(g + 1) * m]
        t1 = time.perf_counter()
        scores = None
        if score_inits is not None and (a.fv_source != "none" or need_entropy):
            scores = score_inits(group_inits, need_entropy)
        t2 = time.perf_counter()
        points = choose_branch_points(group_inits, engine.tokenizer, loop.stops, eos_ids, r.max_response_length, budget,
                                      a, scores, stats).get(g, [])
        for j in range(budget):
            branch_seed = derive_seed(seed, step, first_group + g, "branch", j)
            if j < len(points):
                row, pos, score = points[j]
                prefix = group_inits[row].prefix(pos + 1)
                prefix.kind, prefix.parent, prefix.split_pos, prefix.branch_score = "branch", row, pos, score
                start = LoopStart(prefix, branch_seed, kv=kept.get(group_inits[row]), top_logprobs=0,
                                  parent=group_inits[row])
            else:  # no candidate at all in this prompt's rollouts (e.g. all empty): fresh samples instead
                start = LoopStart.fresh(groups[g].prompt.prompt_ids, group=g, seed=branch_seed, kind="branch",
                                        meta={"refill": True}, row=groups[g].prompt)
                start.top_logprobs = 0
                stats["refill_rows"] = stats.get("refill_rows", 0) + 1
            groups[g].branches.append(start.trajectory)
            if not branches_from:
                branches_from.append(time.perf_counter())
            loop.add(start)
        for t in group_inits:  # caches no branch starts from are freed now; the starts hold the others
            kept.discard(t)
        stats["fv_seconds"] += t2 - t1
        stats["select_seconds"] += time.perf_counter() - t2

    def finished(traj: Trajectory) -> None:
        if traj.kind == "init":
            left[traj.group] -= 1
            if not any(left):
                stats["init_seconds"] = time.perf_counter() - t0
            if budget > 0 and not left[traj.group]:
                branch_out(traj.group)
        elif kept is not None:
            kept.discard(traj)  # a branch's own cache: nothing starts from it
        if on_done is not None:
            on_done(traj)

    loop = ToolLoop(engine, tools, RolloutLoopSettings.from_config(r, cfg.tools, topk), stats, keep=kept,
                    on_done=finished)
    for s in starts:  # a fresh row is never done when added, so no prompt branches out before all are in
        loop.add(s)
    loop.run()
    if branches_from:
        stats["branch_seconds"] = time.perf_counter() - branches_from[0]
    return groups


def choose_branch_points(inits: list[Trajectory], tokenizer, stops: list[str], eos_ids: set[int], max_len: int,
                         budget: int, appo_cfg, scores: InitScores | None, stats: dict) -> dict[int, list]:
    """Branching scores over the generated tokens of every initial rollout, then `budget` points per
    prompt (`core.branching.select_branch_points`). Returns {group: [(row, pos, score), ...]} with rows
    indexing `inits`; a group missing from it (or short) had no candidate at all."""
    width = max((len(t) for t in inits), default=0)
    if width == 0:
        return {}
    valid = _padded([t.generated for t in inits], width, 0).bool()
    if scores is not None and scores.entropies is not None:
        entropy = _padded(scores.entropies, width, 0.0)
    else:
        entropy = _entropies(inits, appo_cfg, width)
    candidates = candidate_mask(inits, tokenizer, stops, eos_ids, max_len, appo_cfg.exclude, width) & valid
    ratios = scores.log_ratio if scores is not None and appo_cfg.fv_source != "none" else None
    use_fv = ratios is not None
    stats["fv_used"] = int(use_fv)
    if use_fv:
        log_ratio = torch.where(valid, _padded(ratios, width, 0.0), 0.0)
    else:
        log_ratio = torch.zeros(len(inits), width)
    ez, fz, score = branching_scores(entropy, log_ratio, valid, appo_cfg.fv_gamma, appo_cfg.fv_clip)

    group_ids = [t.group for t in inits]
    rows_of: dict[int, list[int]] = {}
    for row, g in enumerate(group_ids):
        rows_of.setdefault(g, []).append(row)
    for rows in rows_of.values():
        # A constant future value (fv_source=none, or no policy change yet) makes Z(FV) zero everywhere
        # and every score zero: rank by entropy alone instead, with "strict" meaning ez > 0.
        if not use_fv or bool((fz[rows].abs() < 1e-12).all()):
            score[rows] = ez[rows]
            fz[rows] = valid[rows].float()
            if use_fv:
                stats["fv_zero_variance_groups"] = stats.get("fv_zero_variance_groups", 0) + 1

    if appo_cfg.selection == "score":  # every candidate counts as strict: plain ranking by score
        points = select_branch_points(score, torch.ones_like(ez), torch.ones_like(fz), candidates, group_ids, budget)
    else:
        points = select_branch_points(score, ez, fz, candidates, group_ids, budget)
    picked: dict[int, list] = {}
    seen: set[tuple[int, int]] = set()
    for row, pos, s in points:
        kind = ("repeated" if (row, pos) in seen else
                "strict" if ez[row, pos] > 0 and fz[row, pos] > 0 and s > 0 else "fallback")
        stats[f"{kind}_points"] = stats.get(f"{kind}_points", 0) + 1
        seen.add((row, pos))
        picked.setdefault(group_ids[row], []).append((row, pos, s))
    stats["candidates"] = stats.get("candidates", 0) + int(candidates.sum())
    return picked


def _padded(rows: list[list], width: int, fill) -> torch.Tensor:
    dtype = torch.float32 if isinstance(fill, float) else torch.long
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, values in enumerate(rows):
        if values:
            out[i, :len(values)] = torch.tensor(values, dtype=dtype)
    return out


def _entropies(inits: list[Trajectory], appo_cfg, width: int) -> torch.Tensor:
    if appo_cfg.entropy_source == "full":
        return _padded([t.entropies for t in inits], width, 0.0)
    out = torch.zeros(len(inits), width)
    for i, t in enumerate(inits):
        tops = t.top_logprobs or []
        k = max((len(d) for d in tops), default=0)
        if k == 0:
            continue
        table = torch.full((len(tops), k), float("-inf"))
        for pos, entry in enumerate(tops):
            if entry:
                table[pos, :len(entry)] = torch.tensor(list(entry.values()))
        out[i, :len(tops)] = entropy_from_topk(table)
    return out


def candidate_mask(trajs: list[Trajectory], tokenizer, stops: list[str], eos_ids: set[int], max_len: int,
                   exclude: str, width: int) -> torch.Tensor:
    """Positions that may become branch points (among generated tokens).

    Both modes drop whitespace-only tokens (the reference's filter) and points that leave no response
    budget for a continuation. 'fixed' also drops EOS, each response's final token, and tokens inside a
    tool's closing tag, where the stop string would straddle the split: the continuation would never
    see the whole tag and the call would be skipped (docs/reference-differences.md#b8). The token that
    completes a closing tag stays a candidate: the continuation runs that call and samples what follows
    its result.
    """
    blank: dict[int, bool] = {}
    out = torch.zeros(len(trajs), width, dtype=torch.bool)
    for i, t in enumerate(trajs):
        excluded = _straddles(t, tokenizer, stops) if exclude == "fixed" else set()
        for pos, (tok, gen) in enumerate(zip(t.token_ids, t.generated)):
            if not gen or pos + 1 >= max_len or pos in excluded:
                continue
            if tok not in blank:
                blank[tok] = not tokenizer.decode([tok], skip_special_tokens=False).strip()
            if blank[tok]:
                continue
            if exclude == "fixed" and (tok in eos_ids or pos == len(t) - 1):
                continue
            out[i, pos] = True
    return out


def _straddles(t: Trajectory, tokenizer, stops: list[str]) -> set[int]:
    """Positions inside a closing tag that ends a turn, other than the tag's last token."""
    if not stops:
        return set()
    reach = max(len(s.encode("utf-8")) for s in stops) + 1
    out: set[int] = set()
    n = len(t)
    for end in range(n):
        if not t.generated[end] or (end + 1 < n and t.generated[end + 1]):
            continue  # not the last generated token of a turn
        for k in range(end, max(end - reach, -1), -1):
            if not t.generated[k]:
                break
            if any(s in tokenizer.decode(t.token_ids[k:end + 1], skip_special_tokens=False) for s in stops):
                out.update(range(k, end))
                break
    return out


def init_scorer(source: str, recompute: Recompute,
                recompute_previous: Callable[[list[Trajectory]], list[list[float]] | None]) -> ScoreInits:
    """APPO's rescoring of the initial rows, per `rollout.appo.fv_source`:
    - stale_policy: log π_θk(a) − log π_θk−1(a), the current weights (`recompute`) against the weights
      before the last update (`recompute_previous`; None before the first update: entropy only). Both
      sides are the learner's teacher-forced forward with the same precision and padding, so with no
      update in between the log-ratio is exactly 0 and it measures only where the update moved
      probability.
    - train_infer_mismatch (the reference): `recompute` against the sampler's own log-probs, the same
      weights on both sides, i.e. numerical noise (docs/reference-differences.md#b4).
    - none: no future value.
    Exact entropies, when asked for, come from the same forward as the current-weights log-probs.
    """
    def score(trajs: list[Trajectory], need_entropy: bool) -> InitScores:
        previous = recompute_previous(trajs) if source == "stale_policy" else None
        current = entropies = None
        if source == "train_infer_mismatch" or previous is not None or need_entropy:
            current, entropies = recompute(trajs, need_entropy)
        ratio = None
        if previous is not None:
            ratio = [[c - p for c, p in zip(cur, prev)] for cur, prev in zip(current, previous)]
        elif source == "train_infer_mismatch":
            ratio = [[c - b for c, b in zip(cur, t.logprobs)] for cur, t in zip(current, trajs)]
        return InitScores(ratio, entropies)

    return score
