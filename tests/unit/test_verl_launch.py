"""The seed's verl launch scripts, verbatim: every override accepted (mapped, or noted, or refused naming the
appo key), and `appo config from-verl` turning each reference script into a config that loads."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appo.commands.config import from_verl
from appo.config import ConfigError, load_config
from appo.train.trainer import optimizer_steps_per_rl_step
from appo.verl_launch import LaunchScriptError, read_launch_script

from .appo_cli import assert_user_error, run_appo

SCRIPTS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "launch_scripts"
LAUNCHER_7B = SCRIPTS / "APPO" / "scripts" / "APPO_7B_Reasoning_1node.sh"
ALL_SCRIPTS = sorted(SCRIPTS.glob("*/scripts/*.sh"))


@pytest.fixture()
def launch_7b():
    if not LAUNCHER_7B.exists():
        pytest.skip(f"the reference launch scripts are not at {SCRIPTS}")
    return read_launch_script(LAUNCHER_7B)


def test_every_override_of_the_7b_launcher_is_accepted(launch_7b):
    keys = [o.split("=", 1)[0] for o in launch_7b.overrides]
    assert len(keys) >= 60 and "trainer.n_gpus_per_node" in keys and "hydra.run.dir" in keys
    for override in launch_7b.overrides:  # one by one, as the issue counted them
        load_config("reasoning-7b", [override])
    cfg = load_config("reasoning-7b", launch_7b.overrides)
    a = cfg.actor
    # the script's values, read through its shell variables (_appo_common.sh + the 7B launcher)
    assert (cfg.data.batch_size, cfg.data.max_prompt_length, cfg.rollout.max_response_length) == (96, 2048, 6144)
    assert (a.use_dynamic_bsz, a.ppo_max_token_len_per_gpu, a.log_prob_max_token_len_per_gpu) == (True, 16384, 32768)
    assert a.ref_log_prob_max_token_len_per_gpu == 32768 and a.fsdp.ref_param_offload and not a.fsdp.param_offload
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes, cfg.trainer.project_name) == (8, 1, "reasoning_tasks")
    assert cfg.trainer.loggers == ["jsonl", "console", "wandb"] and cfg.algorithm.reward_fn == "deep_research"
    # ppo_mini_batch_size=16 prompts: 16 x 8 initial rows (branch rows dropped), 768 / 128 = 6 optimizer steps
    # per RL step, as the seed's 16 x 16 rows of 1536 (spec 4.5)
    assert a.mini_batch_size == 128 and optimizer_steps_per_rl_step(cfg) == 6


def test_mapped_keys_set_the_appo_keys():
    cfg = load_config("tiny", ["actor_rollout_ref.actor.fsdp_config.param_offload=True",
                               "actor_rollout_ref.actor.fsdp_config.optimizer_offload=True",
                               "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
                               "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                               "algorithm.drop_branch_rows=false",
                               "trainer.rollout_data_dir=/tmp/x"])
    assert cfg.actor.fsdp.param_offload and cfg.actor.fsdp.optimizer_offload
    assert cfg.actor.mini_batch_size == 2 * cfg.rollout.n  # branch rows kept: n rows per prompt
    assert cfg.trainer.rollout_data_dir == "/tmp/x"


def test_noted_keys_change_nothing_and_say_what_appo_does(caplog):
    with caplog.at_level(logging.WARNING, logger="appo.config"):
        noted = load_config("tiny", ["actor_rollout_ref.model.use_remove_padding=True",
                                     "actor_rollout_ref.actor.policy_loss.chunk_size=128",
                                     "++hydra.run.dir=/somewhere/outputs"])
    assert noted == load_config("tiny")
    text = caplog.text
    assert "use_remove_padding accepted and ignored" in text and "actor.share_prompts" in text
    assert "hydra.run.dir accepted and ignored" in text and "trainer.output_dir" in text


@pytest.mark.parametrize("override, names", [
    ("critic.optim.lr=1e-5", "appo trains no critic"),
    ("actor_rollout_ref.rollout.multi_turn.enable=False", "tools.enabled=[]"),
    ("algorithm.use_kl_in_reward=True", "actor.use_kl_loss=true"),
    ("custom_reward_function.path=/x/my_reward.py", "algorithm.reward_fn='package.module:function'"),
    ("actor_rollout_ref.rollout.tools.tool_instances.search.class_path=x.MySearch", "tools.search.backend"),
    ("trainer.critic_warmup=5", "appo trains no critic"),
])
def test_refused_keys_name_the_appo_key(override, names):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("tiny", [override])
    assert names in str(e.value) and "\n" not in str(e.value)


def test_token_budget_below_the_longest_row_is_refused():
    with pytest.raises(ConfigError, match="at least data.max_prompt_length"):
        load_config("tiny", ["actor.use_dynamic_bsz=true", "actor.ppo_max_token_len_per_gpu=10"])


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_from_verl_on_each_reference_script_loads(script, tmp_path):
    out = tmp_path / "converted.yaml"
    out.write_text(from_verl(str(script)))
    cfg = load_config(str(out))
    if script.parent.parent.name == "ARPO":
        assert cfg.algorithm.name == "arpo" and cfg.rollout.arpo.beam_size == 2 and cfg.actor.loss_mode == "vanilla"
        assert cfg.algorithm.adv_estimator == "grpo" and not cfg.algorithm.drop_branch_rows
    if script.name.startswith("APPO_8B"):
        assert (cfg.data.batch_size, cfg.rollout.max_response_length, cfg.actor.mini_batch_size) == (128, 10000, 128)
        assert cfg.tools.search.backend == "cache" and cfg.tools.search.cache_file.endswith("search_cache.json")
        assert len(cfg.data.val_files) == 2


def test_from_verl_cli_writes_a_config_that_config_show_accepts(tmp_path, launch_7b):
    out = tmp_path / "seed7b.yaml"
    done = run_appo("config", "from-verl", str(LAUNCHER_7B), "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "# note: actor_rollout_ref.model.use_remove_padding accepted and ignored" in text
    shown = run_appo("config", "show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "ppo_mini_batch_size: 16" in shown.stdout and "mini_batch_size: 128" in shown.stdout


def test_from_verl_on_a_script_without_a_trainer_command_fails_in_one_line(tmp_path):
    script = tmp_path / "empty.sh"
    script.write_text("#!/bin/bash\necho hello\n")
    with pytest.raises(LaunchScriptError):
        read_launch_script(script)
    assert_user_error(run_appo("config", "from-verl", str(script)), "config", "empty.sh", "verl.trainer.main_ppo")


def test_shell_expansion_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "common.sh").write_text('BASE="$( cd "$( dirname "${BASH_SOURCE[0]}" )" &> /dev/null && pwd )"\n'
                                        f"touch {marker}\nrun() {{\n  python3 -m verl.trainer.main_ppo \\\n"
                                        '    data.max_prompt_length=$((2*(P+R))) \\\n'
                                        '    model.x="${NAME##*/}" data.train_files=${BASE}/t.parquet '
                                        "2>&1 | tee log\n}\n")
    (tmp_path / "launch.sh").write_text('source "$(dirname "$0")/common.sh"\nP=3\nR=4\nNAME=/a/b/Qwen\nrun\n')
    cmd = read_launch_script(tmp_path / "launch.sh")
    assert cmd.overrides == ["data.max_prompt_length=14", "model.x=Qwen", f"data.train_files={tmp_path.resolve()}/t.parquet"]
    assert not marker.exists()
