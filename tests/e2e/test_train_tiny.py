"""End-to-end RL on the random tiny model: every strategy runs, checkpoints load, resume is exact."""

from __future__ import annotations

import json

import pytest

from appo.commands.train import Pipeline
from appo.config import load_config
from appo.train.tracking import read_metrics

from .conftest import assert_trained_checkpoint

pytestmark = pytest.mark.slow


def _cfg(tmp_path, tiny_model_dir, qa_file, *extra):
    return load_config("tiny", [f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}",
                                "data.task=null", f"data.train_files=[{qa_file}]", "sft.enabled=false",
                                "trainer.device=cpu", "data.system_prompt=quickstart", "data.max_prompt_length=512",
                                "tools.enabled=[python]",
                                *extra])


def _metrics(out):
    return [{k: v for k, v in r.items() if not k.startswith("time/") and "seconds" not in k}
            for r in read_metrics(out / "metrics.jsonl")]


@pytest.mark.parametrize("preset_overrides", [
    ["algorithm.name=appo", "actor.loss_mode=future_kl", "actor.use_kl_loss=true"],
    ["algorithm.name=grpo"],
    ["algorithm.name=arpo", "rollout.arpo.branch_probability=1.0"],
], ids=["appo", "grpo", "arpo"])
def test_two_steps_of_each_algorithm(tmp_path, tiny_model_dir, qa_file, preset_overrides):
    cfg = _cfg(tmp_path, tiny_model_dir, qa_file, *preset_overrides)
    Pipeline(cfg, progress=False).run()
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["actor/optimizer_steps"] >= 1 and r["time/step"] > 0
        assert {"time/generate", "time/tools", "time/reward", "time/learner"} <= set(r)
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_2.jsonl").read_text().splitlines()]
    assert len(dumped) == cfg.data.batch_size * cfg.rollout.n
    if cfg.rollout.strategy == "appo":  # branch rows are dropped before the update
        assert rows[0]["rollout/update_rows"] == cfg.data.batch_size * cfg.rollout.initial_rollouts
        # stale_policy: no previous policy at step 1 (entropy only), the pre-update weights at step 2
        assert cfg.rollout.appo.fv_source == "stale_policy"
        assert [r["rollout/fv_used"] for r in rows] == [0, 1]
    else:
        assert rows[0]["rollout/update_rows"] == cfg.data.batch_size * cfg.rollout.n
    assert (out / "report.md").exists() and (out / "reward.png").exists()


def test_checkpoint_loads_with_transformers(tmp_path, tiny_model_dir, qa_file):
    cfg = _cfg(tmp_path, tiny_model_dir, qa_file, "trainer.total_steps=1")
    Pipeline(cfg, progress=False).run()
    assert_trained_checkpoint(tmp_path / "run" / "checkpoints" / "step_1" / "hf", tiny_model_dir)


def test_kill_and_resume_gives_the_uninterrupted_metrics(tmp_path, tiny_model_dir, qa_file, monkeypatch):
    from appo.train.trainer import Trainer

    extra = ["trainer.total_steps=3", "trainer.save_freq=1", "actor.use_kl_loss=true", "actor.mini_batch_size=2"]
    full = _cfg(tmp_path / "a", tiny_model_dir, qa_file, *extra)
    Pipeline(full, progress=False).run()

    crashed = _cfg(tmp_path / "b", tiny_model_dir, qa_file, *extra)
    real_step = Trainer.rl_step

    def dies_in_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "rl_step", dies_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(crashed, progress=False).run()
    assert [r["step"] for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2]
    report = (tmp_path / "b" / "run" / "report.md").read_text()   # the killed run still reports what it did
    assert "stopped early (KeyboardInterrupt: killed)" in report and "2 RL steps logged" in report
    assert "[step 1](rollouts/step_1.html) · [step 2](rollouts/step_2.html)" in report
    monkeypatch.setattr(Trainer, "rl_step", real_step)
    Pipeline(crashed, progress=False).run(resume=True)

    a, b = _metrics(tmp_path / "a" / "run"), _metrics(tmp_path / "b" / "run")
    assert [r["step"] for r in b] == [1, 2, 3]
    assert a == b


def test_quickstart_pipeline_on_the_tiny_preset(tmp_path, tiny_model_dir, capsys):
    """`appo train --config tiny`: eval -> SFT (task traces, real tools) -> eval -> RL -> eval -> report."""
    from appo.commands.train import main

    out = tmp_path / "run"
    assert main(["--config", "tiny", "--no-progress", f"model.path={tiny_model_dir}", f"trainer.output_dir={out}",
                 "trainer.eval_stages=[base,sft,rl]", "trainer.device=cpu"]) == 0
    state = json.loads((out / "pipeline.json").read_text())
    assert set(state["evals"]) == {"base", "sft", "rl"} and state["rl_done"]
    assert list(state["seconds"]) == ["eval base", "sft", "eval sft", "rl", "eval rl"]
    assert all(v > 0 for v in state["seconds"].values())
    assert "[appo] time by stage: eval base " in capsys.readouterr().out
    sft_log = [json.loads(line) for line in (out / "sft" / "sft_log.jsonl").read_text().splitlines()]
    assert sft_log and sft_log[-1]["loss"] < sft_log[0]["loss"]
    assert (out / "sft" / "config.json").exists()
    report = (out / "report.md").read_text()
    assert "after SFT" in report and "after RL" in report and "Status: finished" in report
    assert "| stage | pass@1 (%) | acc (%) |" in report and "(rollouts/step_2.html)" in report
    dump = [json.loads(line) for line in (out / "rollouts" / "step_2.jsonl").read_text().splitlines()]
    assert all(len(r["advantages"]) == len(r["token_ids"]) for r in dump)   # per-token advantages, as trained
    page = (out / "rollouts" / "step_2.html").read_text()
    assert page.count("· advantage ") >= len(dump)                        # sampled tokens show theirs on hover
    # the SFT model and the RL checkpoint prompt as trained with plain transformers' chat template
    from transformers import AutoTokenizer

    from appo.data.templates import QUICKSTART_SYSTEM_PROMPT, read_prompt_format

    for hf in (out / "sft", out / "checkpoints" / "step_2" / "hf"):
        text = AutoTokenizer.from_pretrained(hf).apply_chat_template([{"role": "user", "content": "1+1?"}],
                                                                     tokenize=False, add_generation_prompt=True)
        assert text.startswith(f"<|im_start|>system\n{QUICKSTART_SYSTEM_PROMPT}<|im_end|>")
        assert read_prompt_format(hf)["system_prompt"] == QUICKSTART_SYSTEM_PROMPT
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("extra, forwards", [([], 0), (["actor.ppo_epochs=2"], 1)], ids=["one_step", "two_epochs"])
def test_old_log_prob_forward_only_when_the_update_takes_several_steps(tmp_path, tiny_model_dir, qa_file,
                                                                       monkeypatch, extra, forwards):
    from appo.train.learner import Learner

    calls = []
    real = Learner.log_probs
    monkeypatch.setattr(Learner, "log_probs", lambda self, *a, **kw: calls.append(kw) or real(self, *a, **kw))
    cfg = _cfg(tmp_path, tiny_model_dir, qa_file, "algorithm.name=grpo", "trainer.total_steps=1",
               "trainer.eval_stages=[]", *extra)
    Pipeline(cfg, progress=False).run()
    assert len([kw for kw in calls if not kw.get("reference")]) == forwards
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["actor/optimizer_steps"] == 1 + forwards


def test_seed_trainer_keys_validate_first_and_dump_rollouts_where_asked(tmp_path, tiny_model_dir, qa_file):
    """trainer.val_before_train (step 0's val/ metrics) and trainer.rollout_data_dir, the seed's keys."""
    elsewhere = tmp_path / "dumps"
    cfg = _cfg(tmp_path, tiny_model_dir, qa_file, "trainer.total_steps=1", f"data.val_files=[{qa_file}]",
               "eval.max_samples=2", "trainer.val_before_train=true", f"trainer.rollout_data_dir={elsewhere}")
    Pipeline(cfg, progress=False).run()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert any(k.startswith("val/") for k in rows[0]) and not any(k.startswith("actor/") for k in rows[0])
    assert (elsewhere / "step_1.jsonl").exists() and not (tmp_path / "run" / "rollouts" / "step_1.jsonl").exists()
    assert "dumps/step_1.html" in (tmp_path / "run" / "report.md").read_text()


def varied_reward(response: str, prompt) -> float:
    """Differs within a group (the random model never earns the real reward), so advantages are not 0."""
    return (sum(map(ord, response)) % 3) / 2


@pytest.mark.parametrize("overrides", [
    ["algorithm.name=drgrpo"],
    ["algorithm.name=dapo", "algorithm.overlong_buffer=8"],
    ["algorithm.name=gspo"],
    ["algorithm.name=rloo"],
    ["algorithm.name=appo", "algorithm.dynamic_sampling=true"],
    ["algorithm.name=appo", "actor.ratio_level=sequence"],
], ids=["drgrpo", "dapo", "gspo", "rloo", "appo+dynamic_sampling", "appo+gspo_ratio"])
def test_two_steps_of_each_baseline(tmp_path, tiny_model_dir, qa_file, overrides):
    cfg = _cfg(tmp_path, tiny_model_dir, qa_file, f"algorithm.reward_fn={__name__}:varied_reward", *overrides)
    Pipeline(cfg, progress=False).run()
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["actor/optimizer_steps"] >= 1 and r["actor/grad_norm"] > 0  # a real update
        # float32 sampler and learner on the same module: the gap is rounding, and nothing is corrected
        assert r["mismatch/abs_logp_diff_max"] < 1e-3 and r["mismatch/masked_frac"] == 0
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_2.jsonl").read_text().splitlines()]
    assert len(dumped) == cfg.data.batch_size * cfg.rollout.n
    if cfg.algorithm.dynamic_sampling:
        assert all(r["rollout/sampling_rounds"] >= 1 for r in rows)
        assert {"rollout/dynamic_dropped_groups"} <= set(rows[0])
    if cfg.algorithm.overlong_buffer:
        assert all("overlong_penalty" in d["meta"] for d in dumped)
        assert any(d["meta"]["overlong_penalty"] < 0 for d in dumped)  # tiny responses run into the budget


def test_the_quickstart_pipeline_in_the_chat_template_format(tmp_path, tiny_model_dir):
    """Cold-start SFT on chat-template traces of the built-in task, evaluation, RL and the saved checkpoint all in
    tools.format=chat_template: the checkpoint records the format, the dumps and the page show it."""
    cfg = load_config("tiny", [f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path / 'run'}",
                               "trainer.device=cpu", "tools.format=chat_template", "tools.chat_template=chatml",
                               "data.max_prompt_length=1024", "sft.max_length=1280", "trainer.total_steps=1",
                               "trainer.eval_stages=[sft]"])
    Pipeline(cfg, progress=False).run()
    out = tmp_path / "run"
    sft = [json.loads(line) for line in (out / "sft" / "sft_log.jsonl").read_text().splitlines()]
    assert sft and sft[-1]["loss"] < sft[0]["loss"]
    saved = json.loads((out / "checkpoints" / "step_1" / "hf" / "appo_prompt.json").read_text())
    assert saved["tool_format"] == "chat_template" and "<python>" not in saved["system_prompt"]
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    assert {r["tool_format"] for r in dumped} == {"chat_template"}
    assert "format chat_template" in (out / "rollouts" / "step_1.html").read_text()
    assert json.loads((out / "eval" / "sft" / "run.json").read_text())["tool_format"] == "chat_template"
