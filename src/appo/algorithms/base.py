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
from typing import ClassVar

import torch

from appo.config import Config, ConfigError, fill_default
from appo.core.advantage import grpo_advantages
from appo.rollout.sampling import sample_groups
from appo.rollout.trajectory import RolloutGroup, Trajectory

Score = Callable[[list[RolloutGroup]], None]  # sets `reward` on every row of the groups


class Algorithm:
    """One RL algorithm: its sampling, advantages, loss rows and update hooks (see the module docstring)."""

    name: ClassVar[str] = "custom"
    paper: ClassVar[str] = ""
    sampler: ClassVar[str] = "grpo"     # the rollout.strategy it implies
    estimator: ClassVar[str] = "grpo"   # the algorithm.adv_estimator it implies
    # What its methods can run when the finer keys override the implied ones: APPO's branching (the
    # rescoring, the snapshot, branch credit, the reward scale M) lives in `appo.algorithms.appo` alone.
    samplers: ClassVar[tuple[str, ...]] = ("grpo", "arpo")
    estimators: ClassVar[tuple[str, ...]] = ("grpo",)

    # ------------------------------------------------------------------------------ start-up

    @classmethod
    def configure(cls, cfg: Config) -> None:
        """Fill the keys this algorithm implies where the config leaves them null, then refuse what does not
        compose. Subclasses fill their own keys first and then call this."""
        a = cfg.algorithm
        fill_default(cfg, "rollout.strategy", cls.sampler)
        fill_default(cfg, "algorithm.adv_estimator", cls.estimator)
        fill_default(cfg, "algorithm.norm_adv_by_std", True)
        fill_default(cfg, "algorithm.drop_branch_rows", a.adv_estimator == "appo")
        fill_default(cfg, "actor.loss_agg_mode", "token-mean")
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
        if a.reward_scale_m != "off" and "appo" not in cls.estimators:
            raise ConfigError(f"algorithm.reward_scale_m={a.reward_scale_m} scales APPO's initial rows by their "
                              f"branches' scores; it needs algorithm.name=appo")

    def __init__(self, cfg: Config, learner=None):
        self.cfg, self.learner = cfg, learner

    # ------------------------------------------------------------------------- 1. rollouts

    def rollouts(self, engine, tools, prompts: Sequence, score: Score, *, step: int, first_group: int = 0,
                 on_done=None) -> tuple[list[RolloutGroup], dict[str, float]]:
        """n rows per prompt, each with its reward; `score` is the task reward (the trainer times it)."""
        groups, stats = self.sample(engine, tools, prompts, step=step, first_group=first_group, on_done=on_done)
        score(groups)
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

    def before_update(self) -> None:
        """Called right before the learner's update."""

    def after_update(self) -> None:
        """Called right after it, before the engine pulls the new weights."""
