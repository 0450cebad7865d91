"""APPO: m initial rollouts per prompt, then n - m branches from the prefixes with the best Branching
Scores, Z(entropy) x Z(future value) (`appo.rollout.appo`); the advantage z-scores initial and branch rows
as two groups and adds each branch's credit to its parent's prefix up to the split
(`appo.core.advantage.appo_advantages`); branch rows carry no loss of their own and leave the batch
(`algorithm.drop_branch_rows`). Before each update it keeps the weights (`rollout.appo.fv_source=
stale_policy`: the next step's future value compares the policy with them); while sampling it rescores each
prompt's initial rows with the learner (`InitRescorer`), whose log-probs the update then reuses; the
reward scale M (`algorithm.reward_scale_m`) is the reference's, off by default."""

from __future__ import annotations

import math

import torch

from appo.algorithms.base import Algorithm
from appo.core.advantage import appo_advantages
from appo.core.branching import mean_reward_scale_m
from appo.precision import resolve_autocast
from appo.rollout.appo import init_scorer
from appo.rollout.sampling import sample_groups
from appo.rollout.trajectory import Trajectory
from appo.train import distributed


class APPO(Algorithm):
    name = "appo"
    paper = "APPO (this project; /work/shared/reference/appo_spec.md)"
    sampler = "appo"
    estimator = "appo"
    samplers = ("appo", "arpo", "grpo")
    estimators = ("appo", "grpo")

    def __init__(self, cfg, learner=None):
        super().__init__(cfg, learner)
        self.rescorer = (InitRescorer(learner, cfg.rollout.appo.fv_source)
                         if learner is not None and cfg.rollout.strategy == "appo" else None)

    # 1. rollouts: the branching needs the learner's rescoring of each prompt's initial rows
    def sample(self, engine, tools, prompts, *, step, first_group=0, on_done=None):
        return sample_groups(engine, tools, prompts, self.cfg, step=step, score_inits=self.rescorer,
                             first_group=first_group, on_done=on_done)

    # 2. advantages: two groups per prompt, branch credit on the parents' prefixes
    def scores(self, rows, splits):
        return scaled_scores(rows, splits, self.cfg)

    def advantages(self, rows, group_ids, splits, mask):
        a = self.cfg.algorithm
        if a.adv_estimator != "appo":
            return super().advantages(rows, group_ids, splits, mask)
        is_branch = torch.tensor([t.kind == "branch" for t in rows])
        return appo_advantages(self.scores(rows, splits), group_ids, is_branch, mask, splits,
                               norm_by_std=a.norm_adv_by_std)

    # 3. branch rows carry no loss of their own (their outcome reaches the parent); dropped by default
    def trains_branch_tokens(self) -> bool:
        return self.cfg.algorithm.adv_estimator != "appo"

    def drops(self, row: Trajectory) -> bool:
        return row.kind == "branch" and drops_branches(self.cfg)

    # 4. the update: reuse the rescoring's log-probs; keep the weights the next future value compares with
    def old_log_probs(self, kept):
        return self.rescorer.reuse(kept) if self.rescorer is not None else None

    def before_update(self) -> None:
        if self.cfg.rollout.strategy == "appo" and self.cfg.rollout.appo.fv_source == "stale_policy":
            self.learner.snapshot()


def drops_branches(cfg) -> bool:
    return cfg.algorithm.adv_estimator == "appo" and bool(cfg.algorithm.drop_branch_rows)


def scaled_scores(rows: list[Trajectory], splits, cfg) -> torch.Tensor:
    """Row scores, with the reference's reward scale M applied to initial rows when enabled ('faithful':
    the sparse reward sits on the last token, so only a branch point at the last token changes it)."""
    scores = torch.tensor([t.reward for t in rows], dtype=torch.float64)
    if cfg.algorithm.reward_scale_m == "off":
        return scores
    # s_max is taken over the whole step's batch, as the reference does: under torchrun, over every rank.
    max_score = distributed.max_all(max(((rows[b].branch_score or 0.0) for _, b, _ in splits), default=-math.inf))
    if not splits:
        return scores
    by_origin: dict[int, list[tuple[int, float]]] = {}
    for o, b, pos in splits:
        by_origin.setdefault(o, []).append((pos, rows[b].branch_score or 0.0))
    for o, branches in by_origin.items():
        length = max(1, len(rows[o]))
        m = mean_reward_scale_m(branches, max_score, length, cfg.algorithm.reward_scale_discount)
        scores[o] = scores[o] * float(m[-1])
    return scores


def _rows(values: torch.Tensor, trajs: list[Trajectory]) -> list[list[float]]:
    return [values[i, : len(t)].tolist() for i, t in enumerate(trajs)]


class InitRescorer:
    """APPO's rescoring of its initial rows with the learner (`appo.rollout.appo.init_scorer`): the future
    value's log-ratio with the same forward on both sides, and exact entropies for engines whose own are
    top-k. Both forwards run in float32 whatever `model.autocast` is: at small learning rates an update
    moves weights by less than bf16's resolution, so bf16 forwards would see mostly rounding, not drift.

    When the learner itself runs in float32, the current-weights log-probs computed here are exactly the
    PPO ratio's old log-probs of the same rows (the initial rows, when branch rows are dropped) and are
    reused, so the future value costs only the previous-weights forward; under bf16 autocast it costs two.
    APPO rescores one prompt's rows at a time; the reuse gathers them."""

    def __init__(self, learner, fv_source: str):
        self.learner = learner
        self.current: dict[int, tuple[Trajectory, torch.Tensor]] = {}  # id(row) -> (row, its log-probs)
        self.score = init_scorer(fv_source, self._recompute, self._recompute_previous)

    def __call__(self, trajs: list[Trajectory], need_entropy: bool):
        return self.score(trajs, need_entropy)

    def _recompute(self, trajs: list[Trajectory], with_entropy: bool):
        current, entropy = self.learner.log_probs([t.prompt_ids for t in trajs], [t.token_ids for t in trajs],
                                                  with_entropy=with_entropy, autocast_dtype="none")
        self.current.update({id(t): (t, current[i]) for i, t in enumerate(trajs)})
        return _rows(current, trajs), None if entropy is None else _rows(entropy, trajs)

    def _recompute_previous(self, trajs: list[Trajectory]) -> list[list[float]] | None:
        behind = self.learner.previous_log_probs([t.prompt_ids for t in trajs], [t.token_ids for t in trajs],
                                                 autocast_dtype="none")
        return None if behind is None else _rows(behind, trajs)

    def reuse(self, kept: list[Trajectory]) -> torch.Tensor | None:
        """The current-weights log-probs of `kept` [rows, longest response] when the rescorings since the
        last call computed exactly these rows, in the learner's own precision (float32); else None."""
        current, self.current = self.current, {}
        learner = self.learner
        if resolve_autocast(learner.model_cfg.autocast, learner.device.type) != "none":
            return None
        if len(current) != len(kept) or any(current.get(id(t), (None,))[0] is not t for t in kept):
            return None
        out = torch.zeros(len(kept), max(1, max(len(t) for t in kept)))
        for i, t in enumerate(kept):
            out[i, :len(t)] = current[id(t)][1][:len(t)]
        return out
