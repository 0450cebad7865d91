"""The algorithm object: what one RL step does between "here are the prompts" and "here is the batch the
learner trains on". `Trainer.rl_step` calls these methods in this order, and nothing else in the trainer
depends on which algorithm runs:

    configure (at start-up) -> rollouts (sample, score, shape) -> advantages -> which rows carry loss
    -> old log-probs -> before_update -> (the learner's update) -> after_update

The base class is the GRPO family: n independent rows per prompt (`rollout.strategy`), the estimator
`algorithm.adv_estimator` names, every row trained. A built-in algorithm (`appo.algorithms.<name>`) or a
user's own (`algorithm.name=pkg.module:Class`) is a subclass that changes what differs; the finer keys
(`rollout.strategy`, `algorithm.adv_estimator`, ...) stay overrides of what `configure` fills in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from appo.config import Config, ConfigError, fill_default

__all__ = ["Algorithm", "fill_default"]  # fill_default: for a configure() of your own
from appo.core.advantage import all_equal_groups, grpo_advantages, overlong_penalty, rloo_advantages
from appo.precision import resolve_autocast
from appo.rollout.sampling import sample_groups
from appo.rollout.trajectory import RolloutGroup, Trajectory

Score = Callable[[list[RolloutGroup]], None]  # sets `reward` on every row of the groups
Refill = Callable[[int], tuple[list, int]]     # round -> (further prompts, their step-wide first group index)


class Algorithm:
    """One RL algorithm: its sampling, advantages, loss rows and update hooks (see the module docstring)."""

    name: ClassVar[str] = "custom"
    paper: ClassVar[str] = ""
    sampler: ClassVar[str] = "grpo"     # the rollout.strategy it implies
    estimator: ClassVar[str] = "grpo"   # the algorithm.adv_estimator it implies
    # What its methods can run when the finer keys override the implied ones: APPO's branching (the
    # rescoring, the snapshot, branch credit, the reward scale M) lives in `appo.algorithms.appo` alone.
    samplers: ClassVar[tuple[str, ...]] = ("grpo", "arpo")
    estimators: ClassVar[tuple[str, ...]] = ("grpo", "rloo")
    # Further keys it implies (dotted key -> value, or a function of the config), set where left null.
    implies: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------------------ start-up

    @classmethod
    def configure(cls, cfg: Config) -> None:
        """Fill the keys this algorithm implies where the config leaves them null, then refuse what does not
        compose."""
        a = cfg.algorithm
        for key, value in cls.implies.items():
            fill_default(cfg, key, value(cfg) if callable(value) else value)
        fill_default(cfg, "rollout.strategy", cls.sampler)
        fill_default(cfg, "algorithm.adv_estimator", cls.estimator)
        fill_default(cfg, "algorithm.norm_adv_by_std", True)
        fill_default(cfg, "algorithm.drop_branch_rows", a.adv_estimator == "appo")
        fill_default(cfg, "actor.loss_agg_mode", "token-mean")
        fill_default(cfg, "actor.ratio_level", "token")
        fill_default(cfg, "actor.loss_horizon", cfg.rollout.max_response_length)
        fill_default(cfg, "algorithm.dynamic_sampling", False)
        fill_default(cfg, "algorithm.overlong_buffer", 0)
        if a.drop_branch_rows and a.adv_estimator != "appo":
            raise ConfigError("algorithm.drop_branch_rows=true needs algorithm.adv_estimator=appo (GRPO advantages "
                              "train every row, branches included)")
        if cfg.rollout.strategy == "grpo" and a.adv_estimator == "appo":
            raise ConfigError("algorithm.adv_estimator=appo needs rollout.strategy=appo (grpo sampling has no "
                              "branches)")
        for key, value, able in (("rollout.strategy", cfg.rollout.strategy, cls.samplers),
                                 ("algorithm.adv_estimator", a.adv_estimator, cls.estimators)):
            if value not in able:
                raise ConfigError(f"{key}={value} is not something algorithm.name={a.name} runs; it runs: "
                                  f"{', '.join(able)} (APPO's branching and credit need algorithm.name=appo; "
                                  "algorithm.name=appo algorithm.adv_estimator=grpo trains its branch rows with "
                                  "GRPO advantages)")
        if a.adv_estimator == "rloo" and cfg.rollout.strategy != "grpo":
            raise ConfigError(f"algorithm.adv_estimator=rloo needs rollout.strategy=grpo: its leave-one-out baseline "
                              f"is unbiased only for independent samples, and {cfg.rollout.strategy}'s branches "
                              "share their parent's prefix")
        if cfg.actor.ratio_level == "sequence" and cfg.actor.loss_mode == "future_kl":
            raise ConfigError("actor.loss_mode=future_kl needs actor.ratio_level=token: its influence is a discounted "
                              "sum of per-token log-ratios, which the sequence ratio (GSPO) replaces")
        if a.reward_scale_m != "off" and "appo" not in cls.estimators:
            raise ConfigError(f"algorithm.reward_scale_m={a.reward_scale_m} scales APPO's initial rows by their "
                              f"branches' scores; it needs algorithm.name=appo")

    def __init__(self, cfg: Config, learner=None):
        self.cfg, self.learner = cfg, learner

    # ------------------------------------------------------------------------- 1. rollouts

    def rollouts(self, engine, tools, prompts: Sequence, score: Score, *, step: int, first_group: int = 0,
                 refill: Refill | None = None, on_done=None) -> tuple[list[RolloutGroup], dict[str, float]]:
        """n rows per prompt, each with its reward; `score` is the task reward (the trainer times it),
        `refill(round)` further prompts for dynamic sampling. Then DAPO's pieces where switched on:
        dynamic sampling (`algorithm.dynamic_sampling`), overlong shaping (`algorithm.overlong_buffer`)."""
        groups, stats = self.sample(engine, tools, prompts, step=step, first_group=first_group, on_done=on_done)
        score(groups)
        if self.cfg.algorithm.dynamic_sampling:
            groups, stats = dynamic_sampling(self, engine, tools, groups, stats, score, refill, step=step,
                                             on_done=on_done)
        overlong_shaping([t for g in groups for t in g.rows], self.cfg)
        return groups, stats

    def sample(self, engine, tools, prompts: Sequence, *, step: int, first_group: int = 0,
               on_done=None) -> tuple[list[RolloutGroup], dict[str, float]]:
        return sample_groups(engine, tools, prompts, self.cfg, step=step, first_group=first_group, on_done=on_done)

    # ------------------------------------------------------------------------ 2. advantages

    def scores(self, rows: list[Trajectory], splits) -> torch.Tensor:
        """The scalar each row's advantage is computed from: its reward."""
        return torch.tensor([t.reward for t in rows], dtype=torch.float64)

    def advantages(self, rows: list[Trajectory], group_ids: list[int], splits, mask: torch.Tensor) -> torch.Tensor:
        """[rows, L] per-token advantages (0 where `mask` is 0)."""
        a = self.cfg.algorithm
        if a.adv_estimator == "rloo":
            return rloo_advantages(self.scores(rows, splits), group_ids, mask)
        return grpo_advantages(self.scores(rows, splits), group_ids, mask, norm_by_std=a.norm_adv_by_std)

    # --------------------------------------------------------------- 3. rows that carry loss

    def trains_branch_tokens(self) -> bool:
        """Whether branch rows' own tokens carry loss (GRPO, ARPO: every row is trained)."""
        return True

    def drops(self, row: Trajectory) -> bool:
        """Whether `row` leaves the batch before the reference forward and the update (it carries no loss)."""
        return False

    # ------------------------------------------------------------------------- 4. the update

    def old_log_probs(self, kept: list[Trajectory]) -> torch.Tensor | None:
        """Old log-probs of `kept` already computed during sampling, or None (the learner computes them)."""
        return None

    def corrects_rollouts(self) -> bool:
        """Whether the loss corrects for the sampler/learner probability gap (`actor.rollout_correction`):
        'auto' is on where they can differ, i.e. another engine, or the learner computing in another
        precision than the sampler (the HF engine samples in model.dtype without autocast)."""
        enabled = self.cfg.actor.rollout_correction.enabled
        if enabled != "auto":
            return enabled == "on"
        if self.cfg.rollout.engine != "hf" or self.learner is None:
            return self.cfg.rollout.engine != "hf"
        autocast = resolve_autocast(self.cfg.model.autocast, self.learner.device.type)
        return (self.cfg.model.dtype if autocast == "none" else autocast) != self.cfg.model.dtype

    def before_update(self) -> None:
        """Called right before the learner's update."""

    def after_update(self) -> None:
        """Called right after it, before the engine pulls the new weights."""


# ------------------------------------------------------------------- DAPO's pieces, for any algorithm


def dynamic_sampling(algo: Algorithm, engine, tools, groups: list[RolloutGroup], stats: dict, score: Score,
                     refill: Refill | None, *, step: int, on_done=None) -> tuple[list[RolloutGroup], dict]:
    """DAPO's dynamic sampling (Yu et al. 2025, section 3.2): drop the groups whose rows all have the same
    reward (their advantage is zero, so they only dilute the batch) and sample further prompts (`refill`)
    until the batch holds as many groups as it started with, in at most `algorithm.max_sampling_rounds`
    rounds; if still short, the dropped groups fill the rest, so every rank trains on the same number of
    rows. Counts: rollout/dynamic_dropped_groups, rollout/sampling_rounds."""
    want, rounds = len(groups), 1
    kept, dropped = _split_constant(groups)
    while len(kept) < want and refill is not None and rounds < algo.cfg.algorithm.max_sampling_rounds:
        prompts, first = refill(rounds)
        more, more_stats = algo.sample(engine, tools, prompts, step=step, first_group=first, on_done=on_done)
        score(more)
        for key, value in more_stats.items():
            stats[key] = stats.get(key, 0) + value
        ok, bad = _split_constant(more)
        kept, dropped, rounds = kept + ok, dropped + bad, rounds + 1
    stats["rollout/dynamic_dropped_groups"] = len(dropped)
    stats["rollout/sampling_rounds"] = rounds
    out = (kept + dropped)[:want]
    for g, group in enumerate(out):  # the step's group index, as the rollout dump numbers them
        for t in group.rows:
            t.group = g
    rows = [t for group in out for t in group.rows]  # what the batch holds, not what was sampled
    stats["rollout/init_rows"] = sum(len(group.inits) for group in out)
    stats["rollout/branch_rows"] = sum(len(group.branches) for group in out)
    stats["rollout/tool_calls_per_row"] = sum(t.tool_calls for t in rows) / len(rows)
    stats["rollout/response_length"] = sum(len(t) for t in rows) / len(rows)
    return out, stats


def _split_constant(groups: list[RolloutGroup]) -> tuple[list[RolloutGroup], list[RolloutGroup]]:
    rows = [(t.reward, g) for g, group in enumerate(groups) for t in group.rows]
    constant = all_equal_groups([r for r, _ in rows], [g for _, g in rows])
    return ([x for g, x in enumerate(groups) if g not in constant], [x for g, x in enumerate(groups) if g in constant])


def overlong_shaping(rows: list[Trajectory], cfg: Config) -> None:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) added to each row's reward where
    `algorithm.overlong_buffer` > 0; the penalty is kept in the row's meta, for the rollout dump."""
    a = cfg.algorithm
    if not a.overlong_buffer:
        return
    for t in rows:
        penalty = overlong_penalty(len(t), cfg.rollout.max_response_length, a.overlong_buffer, a.overlong_penalty)
        t.meta["overlong_penalty"] = penalty
        t.reward = t.reward + penalty
