"""The Python API: a Config built in code resolves like a loaded one, and the whole SFT -> RL pipeline runs
from the library with a reward function and a tool object handed to it (no config names them)."""

from __future__ import annotations

import ast
import json
import operator

import pytest
import torch

from appo.config import Config, ConfigError, load_config, preset_names, resolve
from appo.data.templates import system_prompt_for_tools
from appo.models import load_model, load_tokenizer
from appo.rollout.hf import HFEngine
from appo.tools import ToolResult, ToolRunner
from appo.train.pipeline import run_pipeline
from appo.train.tracking import read_metrics

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def test_a_config_built_in_code_resolves():
    cfg = Config()
    assert cfg.rollout.strategy is None
    resolved = resolve(cfg)
    assert (resolved.rollout.strategy, resolved.algorithm.adv_estimator) == ("appo", "appo")
    assert resolve(resolved) == resolved  # resolving twice changes nothing
    cfg.algorithm.name = "grpo"
    assert resolve(cfg).rollout.strategy == "grpo"
    cfg.rollout.temperature = -1.0
    with pytest.raises(ConfigError, match=r"rollout.temperature=-1.0 is out of range"):
        resolve(cfg)


@pytest.mark.parametrize("preset", preset_names())
def test_resolving_a_loaded_preset_changes_nothing(preset):
    cfg = load_config(preset)
    assert resolve(cfg) == cfg  # the pipeline resolves what it is given: a preset runs exactly as loaded


class Calculator:
    """A tool object of the user's own: evaluates `print(a + b)`-style arithmetic without running code."""

    name = "python"

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, call) -> ToolResult:
        self.calls.append(call.payload)
        try:
            expr = ast.parse(call.payload.strip().removeprefix("print(").removesuffix(")"), mode="eval").body
            return ToolResult(str(self._eval(expr)), True)
        except (SyntaxError, ValueError, KeyError) as e:
            return ToolResult(f"Error: {e}", False)

    def _eval(self, node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](self._eval(node.left), self._eval(node.right))
        raise ValueError("only integer + - * here")


def test_the_pipeline_runs_from_python_with_a_reward_and_a_tool_passed_in(tmp_path, tiny_model_dir):
    pairs = [(a, b) for a in range(2, 6) for b in (3, 7)]
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "level": "easy" if a < 4 else "hard"}
            for a, b in pairs]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    system = system_prompt_for_tools(["python"])  # what the RL rows get, so SFT teaches the same prompt
    convs = [{"messages": [{"role": "system", "content": system},
                           {"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": f"<python>print({a} + {b})</python>\n<result>\n"
                                                            f"{a + b}\n</result>\n<answer>\\boxed{{{a + b}}}</answer>"}]}
             for r, (a, b) in zip(rows, pairs, strict=True)]
    (tmp_path / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))

    cfg = Config()
    cfg.model.path, cfg.model.autocast = str(tiny_model_dir), "none"
    cfg.data.train_files, cfg.data.batch_size, cfg.data.max_prompt_length = [str(tmp_path / "mine.jsonl")], 4, 256
    cfg.rollout.n, cfg.rollout.initial_rollouts, cfg.rollout.max_response_length = 4, 2, 32
    cfg.tools.enabled, cfg.tools.call_limit = ["python"], 1
    cfg.actor.lr, cfg.actor.micro_batch_size = 1e-3, 8
    cfg.sft.files, cfg.sft.epochs, cfg.sft.batch_size, cfg.sft.lr = [str(tmp_path / "convs.jsonl")], 40, 8, 3e-3
    cfg.sft.warmup_steps = 0
    cfg.trainer.output_dir, cfg.trainer.total_steps = str(tmp_path / "run"), 2
    cfg.trainer.eval_stages, cfg.trainer.loggers, cfg.trainer.device = [], ["jsonl"], "cpu"

    seen_levels = []

    def correct(response, ground_truth, level):
        seen_levels.append(level)
        return float(f"\\boxed{{{ground_truth}}}" in response)

    def tagged(response):
        return 0.1 if "<answer>" in response else None

    calculator = Calculator()
    # An engine of the caller's own, sampling with its own copy of the (untrained) weights: the pipeline
    # must hand it the SFT weights before RL and the new weights after every update.
    engine = HFEngine(load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), max_batch_size=16,
                      own_copy=True)
    state = run_pipeline(cfg, progress=False, tools=ToolRunner({"python": calculator}),
                         rewards=[correct, (tagged, 0.5)], engine=engine)
    assert state["rl_done"]
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"reward/correct", "reward/tagged"} <= set(metrics[0])  # each function's mean, on its own
    assert set(seen_levels) == {"easy", "hard"}  # the data's own column reached the reward
    assert calculator.calls, "the policy's tool calls did not reach the tool object passed in"
    step_1 = [json.loads(line) for line in (tmp_path / "run" / "rollouts" / "step_1.jsonl").read_text().splitlines()]
    assert sum(r["tool_calls"] for r in step_1) > 0  # sampled with the SFT weights, not the engine's random ones
    trained = load_model(str(tmp_path / "run" / "checkpoints" / "step_2" / "hf")).state_dict()
    assert all(torch.equal(trained[k], v) for k, v in engine.model.state_dict().items())
    assert cfg.rollout.strategy is None  # the caller's config is left as it was
