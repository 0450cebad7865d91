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


@pytest.mark.parametrize("name", ["grpo", "arpo", "appo"])
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
    with pytest.raises(ConfigError, match="reward_scale_m=faithful .* needs algorithm.name=appo"):
        load_config("tiny", ["algorithm.name=arpo", "algorithm.reward_scale_m=faithful"])
