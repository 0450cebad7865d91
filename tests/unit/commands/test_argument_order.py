"""Overrides and flags in any order: `appo train --no-progress a=1 b=2`, `appo eval a=1 --k 2 b=2`, ...
(before, overrides on both sides of a flag were refused by argparse: "unrecognized arguments").

Every case ends on a config error about the last override, which shows that it reached the config."""

from __future__ import annotations

import pytest

from tests.unit.appo_cli import assert_user_error, run_appo

BAD = "trainer.loggers=[nope]"


@pytest.mark.parametrize("argv", [
    ("train", "data.batch_size=2", "--no-progress", BAD),
    ("train", "--config", "tiny", "data.batch_size=2", "--resume", "rollout.n=4", BAD),
    ("sft", "data.batch_size=2", "--config", "tiny", BAD),
    ("rollout", "data.batch_size=2", "--no-progress", BAD),
    ("eval", "tiny", "data.batch_size=2", "--no-progress", BAD),
    ("eval", "tiny", "--k", "1", "data.batch_size=2", "--no-progress", BAD),
])
def test_overrides_after_a_flag_reach_the_config(tmp_path, argv):
    assert_user_error(run_appo(*argv, cwd=tmp_path), argv[0], "trainer.loggers", "nope")
