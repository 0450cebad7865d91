"""`algorithm.name` resolves to one object wherever a config is built: from YAML, from overrides, and for a
Config built in code (`appo.config.resolve`); a user's own class loads by 'pkg.module:Class'."""

from __future__ import annotations

import pytest

from appo.algorithms.base import Algorithm
from appo.algorithms.grpo import GRPO
from appo.config import Config, ConfigError, algorithm_class, load_config, resolve


class Halved(GRPO):
    """A user's algorithm: GRPO with every advantage halved (the docs' worked example has the same shape)."""

    def advantages(self, rows, group_ids, splits, mask):
        return 0.5 * super().advantages(rows, group_ids, splits, mask)


def test_a_config_built_in_code_resolves_like_a_loaded_one():
    built = Config()
    assert built.rollout.strategy is None and built.algorithm.adv_estimator is None
    cfg = resolve(built)
    loaded = load_config(None)
    for get in (lambda c: c.rollout.strategy, lambda c: c.algorithm.adv_estimator,
                lambda c: c.algorithm.drop_branch_rows, lambda c: c.algorithm.norm_adv_by_std,
                lambda c: c.actor.loss_agg_mode):
        assert get(cfg) == get(loaded) and get(cfg) is not None
    assert resolve(cfg) == cfg and cfg.rollout.strategy == "appo"  # idempotent


@pytest.mark.parametrize("name", ["grpo", "arpo", "appo", "drgrpo", "dapo", "gspo", "rloo"])
def test_built_in_names_are_algorithm_classes(name):
    cls = algorithm_class(name)
    assert issubclass(cls, Algorithm) and cls.name == name and cls.paper


def test_a_users_own_algorithm_loads_by_module_and_class():
    cfg = load_config("tiny", [f"algorithm.name={__name__}:Halved"])
    assert algorithm_class(cfg.algorithm.name) is Halved
    assert (cfg.rollout.strategy, cfg.algorithm.adv_estimator) == ("grpo", "grpo")


@pytest.mark.parametrize("name, message", [
    ("ppo", "choose one of: grpo, arpo, appo"),
    ("no_such_pkg.mod:Cls", "cannot import no_such_pkg.mod"),
    (f"{__name__}:Missing", "has no algorithm class 'Missing'"),
])
def test_a_bad_algorithm_name_fails_at_start_up(name, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [f"algorithm.name={name}"])


def test_overrides_the_algorithm_cannot_run_are_refused():
    with pytest.raises(ConfigError, match="rollout.strategy=appo is not something algorithm.name=grpo runs"):
        load_config("tiny", ["algorithm.name=grpo", "rollout.strategy=appo"])
    with pytest.raises(ConfigError, match="adv_estimator=rloo needs rollout.strategy=grpo"):
        load_config("tiny", ["algorithm.name=arpo", "algorithm.adv_estimator=rloo"])
    with pytest.raises(ConfigError, match="future_kl needs actor.ratio_level=token"):
        load_config("tiny", ["algorithm.name=gspo", "actor.loss_mode=future_kl"])
    with pytest.raises(ConfigError, match="reward_scale_m=faithful .* needs algorithm.name=appo"):
        load_config("tiny", ["algorithm.name=arpo", "algorithm.reward_scale_m=faithful"])


class MedianBaseline(GRPO):
    """docs/algorithms.md's worked example, verbatim."""
    name = "median"
    implies = {"algorithm.norm_adv_by_std": False}  # only where the user left it null

    def advantages(self, rows, group_ids, splits, mask):
        import torch

        scores = self.scores(rows, splits)
        ids = torch.tensor(group_ids)
        base = torch.stack([scores[ids == g].median() for g in group_ids])
        return (scores - base).float().unsqueeze(-1) * mask


def test_the_docs_worked_example_resolves_and_computes_its_advantage():
    import torch

    from appo.rollout.trajectory import Trajectory

    cfg = load_config("tiny", [f"algorithm.name={__name__}:MedianBaseline"])
    assert cfg.algorithm.norm_adv_by_std is False
    rows = [Trajectory(prompt_ids=[1], token_ids=[5, 6], generated=[1, 1], reward=r) for r in (0.0, 1.0, 3.0)]
    adv = MedianBaseline(cfg).advantages(rows, [0, 0, 0], [], torch.ones(3, 2))
    assert adv[:, 0].tolist() == [-1.0, 0.0, 2.0]  # median 1


@pytest.mark.parametrize("name, implied", [
    ("drgrpo", {"algorithm.norm_adv_by_std": False, "actor.loss_agg_mode": "seq-mean-token-sum-norm",
                "actor.loss_horizon": 24}),
    ("dapo", {"algorithm.dynamic_sampling": True, "algorithm.overlong_buffer": 4, "actor.clip_ratio_high": 0.28,
              "actor.loss_agg_mode": "token-mean", "actor.use_kl_loss": False}),
    ("gspo", {"actor.ratio_level": "sequence", "actor.loss_agg_mode": "seq-mean-token-mean",
              "actor.sequence_clip_ratio_low": 3e-4, "actor.sequence_clip_ratio_high": 4e-4}),
    ("rloo", {"algorithm.adv_estimator": "rloo", "rollout.strategy": "grpo"}),
    ("appo", {"algorithm.dynamic_sampling": False, "algorithm.overlong_buffer": 0, "actor.ratio_level": "token"}),
])
def test_each_name_implies_its_papers_keys_and_explicit_keys_override_them(name, implied):
    cfg = load_config("tiny", [f"algorithm.name={name}"])  # tiny: rollout.max_response_length=24
    for key, want in implied.items():
        group, leaf = key.split(".")
        assert getattr(getattr(cfg, group), leaf) == want, key
    kept = load_config("tiny", [f"algorithm.name={name}", "actor.loss_agg_mode=seq-mean-token-sum"])
    assert kept.actor.loss_agg_mode == "seq-mean-token-sum"
