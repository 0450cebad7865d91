"""Every example under examples/ runs as its README says, `appo train --config examples/<name>/config.yaml`
from the repository root, here on the tiny model for two short steps; and a tool, an environment and a
reward written outside the repository run through `appo train` and `appo tool` (docs/extending.md)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from appo.train.tracking import read_metrics
from tests.unit.appo_cli import run_appo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # minutes each on a loaded 2-core machine
ROOT = Path(__file__).resolve().parents[2]
SHORT = ["trainer.device=cpu", "data.batch_size=2", "rollout.n=4", "rollout.initial_rollouts=2",
         "rollout.max_response_length=48", "rollout.gen_batch_size=16", "trainer.total_steps=2",
         "trainer.eval_stages=[]", "trainer.loggers=[jsonl]", "trainer.max_minutes=null", "model.autocast=none",
         "sft.epochs=1", "sft.batch_size=16", "sft.max_length=384", "data.max_prompt_length=1024",
         "actor.micro_batch_size=4"]


@pytest.mark.parametrize("name", ["sql", "kv_store"])
def test_example_trains_two_steps(tmp_path, tiny_model_dir, name):
    out = tmp_path / "run"
    proc = run_appo("train", "--config", f"examples/{name}/config.yaml", "--no-progress",
                    f"model.path={tiny_model_dir}", f"trainer.output_dir={out}", *SHORT, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    # one environment per trajectory: 2 prompts x (2 initial rows + 2 branches), every step
    assert all(r["rollout/env_sessions"] == 8 for r in rows)
    assert (out / "sft" / "config.json").exists()


def test_a_users_own_tool_environment_and_reward_outside_the_repository(tmp_path, tiny_model_dir):
    """What docs/extending.md tells a user to write, kept in their own folder, run without touching appo."""
    (tmp_path / "my_agent.py").write_text(textwrap.dedent('''
        def word_count(text: str) -> str:
            """Count the words of a text."""
            return str(len(text.split()))


        class Notebook:
            """A notebook per trajectory, started with the row's `topic`."""

            def setup(self, topic: str) -> None:
                self.notes = [topic]

            def write(self, note: str) -> str:
                """Add a note."""
                self.notes.append(note)
                return f"{len(self.notes)} notes"

            def read(self) -> str:
                """All notes, one per line."""
                return "\\n".join(self.notes)

            def reward(self) -> float:
                return min(1.0, (len(self.notes) - 1) / 2)


        def says_topic(response: str, topic: str) -> float:
            return float(topic in response)
    '''))
    rows = [{"question": f"Take notes about {t}.", "answer": t, "topic": t} for t in ("owls", "tides", "salt", "moss")]
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "agent.yaml").write_text(textwrap.dedent('''
        defaults: tiny
        data:
          task: null
          train_files: [notes.jsonl]
          system_prompt: "Write notes with <write>text</write>, read them with <read></read>."
          max_prompt_length: 512
        tools:
          enabled: []
          custom: ["my_agent:word_count"]
          environment:
            spec: my_agent:Notebook
        sft:
          enabled: false
        algorithm:
          rewards:
            - {fn: "my_agent:says_topic", weight: 1.0}
            - {fn: env, weight: 0.5}
    '''))
    listed = run_appo("tool", "--list", "--config", "agent.yaml", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [line.split(":")[0] for line in listed.stdout.splitlines() if not line.startswith(" ")] == [
        "word_count", "read", "write"]
    called = run_appo("tool", "read", "--config", "agent.yaml", "--row", '{"topic": "owls"}',
                      "--before", "write=hoot", cwd=tmp_path)
    assert called.returncode == 0 and called.stdout == "owls\nhoot\n", called.stderr
    assert run_appo("tool", "word_count", "three small words", "--config", "agent.yaml",
                    cwd=tmp_path).stdout == "3\n"
    out = tmp_path / "run"
    proc = run_appo("train", "--config", "agent.yaml", "--no-progress", f"model.path={tiny_model_dir}",
                    f"trainer.output_dir={out}", "trainer.device=cpu", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["rollout/env_sessions"] > 0 for r in rows)
