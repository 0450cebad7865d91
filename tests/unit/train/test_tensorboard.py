"""TensorBoard holds what the report shows: the SFT loss, the stage evaluations and the policy's entropy
beside the RL metrics (before, only the RL step metrics reached it). Checked by reading the event files back."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from tests.unit.appo_cli import run_appo


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    mux = EventMultiplexer().AddRunsFromDirectory(str(folder))
    mux.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for run in mux.Runs():
        for tag in mux.GetAccumulator(run).Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in mux.Scalars(run, tag))
    return out


def test_tensorboard_has_the_sft_loss_the_evaluations_and_the_entropy(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    proc = run_appo("train", "--config", "tiny", "--no-progress", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={run}", "tools.enabled=[python]", "data.task=arithmetic",
                    "trainer.total_steps=1", "trainer.eval_stages=[sft,rl]", "trainer.loggers=[jsonl,tensorboard]",
                    cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = _scalars(run / "tensorboard")
    sft = [line for line in (run / "sft" / "sft_log.jsonl").read_text().splitlines() if line.strip()]
    assert [s for s, _ in scalars["sft/loss"]] == list(range(1, len(sft) + 1))
    assert {"eval/sft/pass@1", "eval/rl/pass@1", "eval/rl/reward"} <= set(scalars)
    assert [s for s, _ in scalars["eval/rl/pass@1"]] == [1]          # after RL step 1
    assert [s for s, _ in scalars["reward/mean"]] == [1]
    (step, entropy), = scalars["rollout/entropy_mean"]
    assert step == 1 and entropy > 0
