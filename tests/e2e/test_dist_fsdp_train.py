"""`appo train` under torchrun (2 CPU processes, gloo, FSDP2) equals the one-process run: same rollouts,
metrics and final weights; the checkpoint loads with transformers; resume works; bad sizes fail early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appo.train.tracking import read_metrics

from .conftest import assert_trained_checkpoint

pytestmark = [pytest.mark.dist, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def toy_reward(response: str, prompt) -> float:
    """Varies within a group, so advantages, gradients and the stale-policy future value are not ~0 (the
    random model never earns the real reward, and a zero signal would make the update pure rounding noise)."""
    return (sum(map(ord, response)) % 5) / 4


def _train(out: Path, model_dir, qa_file, nproc: int, *extra: str, check: bool = True, by_appo: bool = False):
    """`appo train` in `nproc` processes: started by a hand-written torchrun line, or (`by_appo`) by appo
    itself from trainer.n_gpus_per_node."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    if by_appo:
        launcher, extra = [], (f"trainer.n_gpus_per_node={nproc}", *extra)
    args = [sys.executable, *launcher, "-m", "appo.cli", "train", "--config", "tiny", "--no-progress",
            f"model.path={model_dir}", f"trainer.output_dir={out}", "data.task=null", f"data.train_files=[{qa_file}]",
            "sft.enabled=false", "trainer.device=cpu", "trainer.eval_stages=[]", "data.system_prompt=quickstart",
            "data.max_prompt_length=512", "tools.enabled=[python]", "model.dtype=float32", "model.autocast=none",
            f"algorithm.reward_fn={__name__}:toy_reward", "data.batch_size=4", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _weights(out: Path, step: int):
    from safetensors.torch import load_file

    return load_file(out / "checkpoints" / f"step_{step}" / "hf" / "model.safetensors")


def _rows(out: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (out / "rollouts" / f"step_{step}.jsonl").read_text().splitlines()]


def _assert_same_step(m1: dict, m2: dict, r1: list[dict], r2: list[dict]):
    for key in ("reward/mean", "reward/accuracy", "rollout/update_rows", "rollout/init_rows",
                "rollout/branch_rows", "rollout/generated_tokens", "actor/optimizer_steps"):
        assert m1.get(key) == m2.get(key), (m1["step"], key, m1.get(key), m2.get(key))
    assert m2["actor/pg_loss"] == pytest.approx(m1["actor/pg_loss"], rel=1e-4, abs=1e-7)
    assert m2["actor/grad_norm"] == pytest.approx(m1["actor/grad_norm"], rel=1e-4)
    assert m1["actor/grad_norm"] > 1e-3  # a real update, not rounding noise
    # the same rows, in the same (step-wide group) order
    assert [(r["group"], r["token_ids"]) for r in r1] == [(r["group"], r["token_ids"]) for r in r2]


def _assert_same_weights(one: Path, two: Path, step: int):
    import torch

    w1, w2, start = _weights(one, step), _weights(two, step), _weights(one, 1)
    assert any(not torch.equal(w1[k], start[k]) for k in start) or step == 1
    lr = 1e-3  # the tiny preset's actor.lr
    for key in w1:
        # Adam divides by sqrt(v): where an element's gradient is near zero, rounding-level differences in it
        # (each process splits its rows into other micro-batches and prefix passes) move that element's
        # update by a visible fraction of lr. So nearly every element agrees to 1e-5, none by worse than lr / 10.
        diff = (w2[key] - w1[key]).abs()
        assert (diff > 1e-5).float().mean() <= 1e-4 and diff.max() <= lr / 10, (key, diff.max(), (diff > 1e-5).sum())


def test_grpo_two_processes_match_one(tmp_path, tiny_model_dir, qa_file):
    extra = ["algorithm.name=grpo", "trainer.save_freq=1"]
    _train(tmp_path / "one", tiny_model_dir, qa_file, 1, *extra)
    _train(tmp_path / "two", tiny_model_dir, qa_file, 2, *extra)
    m1, m2 = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    for step in (1, 2):
        _assert_same_step(m1[step - 1], m2[step - 1], _rows(tmp_path / "one", step), _rows(tmp_path / "two", step))
    _assert_same_weights(tmp_path / "one", tmp_path / "two", 2)


def test_appo_two_processes_match_one_and_resume(tmp_path, tiny_model_dir, qa_file):
    """APPO with the stale-policy future value, future-KL loss and a KL reference. Step 1 is exact. At step 2
    the future value compares the sampler with the pre-update FSDP2 shards swapped back in; it is a small
    log-ratio, so the sampler's batch-dependent last-bit noise (1e-6) moves branching scores by ~1e-3 and may
    flip a near-tie: step 2 checks the initial rows exactly and the branch scores approximately."""
    extra = ["algorithm.name=appo", "actor.loss_mode=future_kl",
             "actor.use_kl_loss=true", "rollout.appo.fv_source=stale_policy", "trainer.save_freq=1"]
    _train(tmp_path / "one", tiny_model_dir, qa_file, 1, *extra)
    # 2 processes: killed after the step-1 checkpoint (pipeline state says RL is unfinished), then resumed
    _train(tmp_path / "two", tiny_model_dir, qa_file, 2, *extra, "trainer.total_steps=1")
    pipeline = tmp_path / "two" / "pipeline.json"
    pipeline.write_text(json.dumps(dict(json.loads(pipeline.read_text()), rl_done=False)))
    _train(tmp_path / "two", tiny_model_dir, qa_file, 2, *extra, "--resume")

    m1, m2 = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    _assert_same_step(m1[0], m2[0], _rows(tmp_path / "one", 1), _rows(tmp_path / "two", 1))
    _assert_same_weights(tmp_path / "one", tmp_path / "two", 1)
    assert m1[1]["rollout/fv_used"] == m2[1]["rollout/fv_used"] == 1
    assert m1[1]["actor/kl_loss"] > 0 and m2[1]["actor/kl_loss"] == pytest.approx(m1[1]["actor/kl_loss"], rel=1e-3)
    r1, r2 = _rows(tmp_path / "one", 2), _rows(tmp_path / "two", 2)
    assert [r["token_ids"] for r in r1 if r["kind"] == "init"] == [r["token_ids"] for r in r2 if r["kind"] == "init"]
    s1 = [r["branch_score"] for r in r1 if r["kind"] == "branch"]
    s2 = [r["branch_score"] for r in r2 if r["kind"] == "branch"]
    assert s2 == pytest.approx(s1, rel=2e-2, abs=2e-2)  # a wrong (un-swapped) snapshot gives unrelated scores


def test_two_process_checkpoint_loads_with_transformers(tmp_path, tiny_model_dir, qa_file):
    # 16 rows, mini-batches of 8: each rank trains on 4 of its 8 rows per optimizer step, two steps
    _train(tmp_path / "run", tiny_model_dir, qa_file, 2, "algorithm.name=grpo",
           "trainer.total_steps=1", "actor.mini_batch_size=8")
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["actor/optimizer_steps"] == 2
    assert_trained_checkpoint(tmp_path / "run" / "checkpoints" / "step_1" / "hf", tiny_model_dir)
    assert (tmp_path / "run" / "report.md").exists()


def test_batch_size_not_divisible_by_world_size_fails_at_start(tmp_path, tiny_model_dir, qa_file):
    done = _train(tmp_path / "run", tiny_model_dir, qa_file, 2, "data.batch_size=3", check=False)
    assert done.returncode != 0
    assert "data.batch_size=3 must be divisible by the number of processes (2)" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_appo_train_starts_its_own_processes_like_the_torchrun_line(tmp_path, tiny_model_dir, qa_file):
    """`appo train trainer.n_gpus_per_node=2 trainer.device=cpu` (torchrun's elastic launcher, gloo) runs the
    tiny preset to the same numbers as `torchrun --standalone --nproc_per_node=2 -m appo.cli train`."""
    extra = ["algorithm.name=appo", "trainer.save_freq=2"]
    _train(tmp_path / "torchrun", tiny_model_dir, qa_file, 2, *extra)
    done = _train(tmp_path / "appo", tiny_model_dir, qa_file, 2, *extra, by_appo=True)
    assert "[appo] starting 2 process(es) on this node of 1 (torchrun elastic launcher" in done.stdout
    m1 = read_metrics(tmp_path / "torchrun" / "metrics.jsonl")
    m2 = read_metrics(tmp_path / "appo" / "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    for a, b in zip(m1, m2, strict=True):
        same = {k: v for k, v in a.items() if not k.startswith("time/") and not k.endswith("seconds")}
        assert same == {k: b[k] for k in same}, a["step"]
    for step in (1, 2):
        assert _rows(tmp_path / "torchrun", step) == _rows(tmp_path / "appo", step)
    import torch

    w1, w2 = _weights(tmp_path / "torchrun", 2), _weights(tmp_path / "appo", 2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    state = torch.load(tmp_path / "appo" / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=True)
    assert state["learner"]["world_size"] == 2  # two ranks really ran


def test_appo_launch_refuses_sizes_that_do_not_divide_before_starting(tmp_path, tiny_model_dir, qa_file):
    done = _train(tmp_path / "run", tiny_model_dir, qa_file, 2, "data.batch_size=3", check=False, by_appo=True)
    assert done.returncode == 2 and "starting" not in done.stdout
    assert "data.batch_size=3 must be divisible by the number of processes (2)" in done.stderr


def test_every_count_adds_up_over_two_processes(tmp_path, tiny_model_dir, qa_file):
    """ARPO (refill rows, decisions, prefill token counts) for one step: every statistic that counts something
    (its reduction is a sum) and every reward metric is the one-process run's, and maxima are not averaged
    (before, unnamed counts such as rollout/arpo_decisions were averaged over ranks: 17 became 8.5)."""
    from appo.train.trainer import reduction

    extra = ["algorithm.name=arpo", "rollout.arpo.branch_probability=1.0", "trainer.total_steps=1"]
    _train(tmp_path / "one", tiny_model_dir, qa_file, 1, *extra)
    _train(tmp_path / "two", tiny_model_dir, qa_file, 2, *extra)
    (m1,), (m2,) = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [(r["group"], r["token_ids"]) for r in _rows(tmp_path / "one", 1)] == \
        [(r["group"], r["token_ids"]) for r in _rows(tmp_path / "two", 1)]
    counts = [k for k in m1 if reduction(k) == "sum" and not k.startswith("actor/")]
    assert {"rollout/arpo_decisions", "rollout/init_rows", "rollout/branch_rows", "rollout/generated_tokens",
            "rollout/update_rows"} <= set(counts)
    assert m1["rollout/refill_rows"] > 0 and m1["rollout/prefill_tokens/initial"] > 0  # the random model calls no tool
    # How much of the prompt prefill a batch shares depends on which prompts decode together (each rank
    # batches its own): that split differs, the prompt tokens prefilled in all do not.
    split = ("rollout/prefill_tokens/initial", "rollout/shared_prefill_tokens")
    assert sum(m2[k] for k in split) == sum(m1[k] for k in split)
    assert {k: m2.get(k) for k in counts if k not in split} == {k: m1[k] for k in counts if k not in split}
    for key in ("reward/mean", "reward/init_mean", "reward/accuracy", "rollout/tool_calls_mean",
                "rollout/response_length_mean", "rollout/truncated_frac"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-12), key
    assert reduction("rollout/peak_kv_bytes") == "max" and reduction("mismatch/seq_ratio_min") == "min"
