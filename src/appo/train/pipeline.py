"""The whole training pipeline as a library: `run_pipeline(cfg, ...)` (what `appo train` runs).

    checks -> eval (base) -> cold-start SFT -> eval (after SFT) -> RL -> eval (after RL) -> report.md

From Python, build a `Config` in code (or `load_config`), and hand over what the config cannot name:

    from appo.config import Config
    from appo.train.pipeline import run_pipeline

    cfg = Config()
    cfg.model.path = "tiny"
    run_pipeline(cfg, rewards=[(my_reward, 1.0)])

`tools` (a ToolRunner), `rewards` (a RewardSet, or functions / `(function, weight)` pairs added to the
configured ones) and `engine` (one with its own copy of the weights, which it gets before each evaluation,
before RL and after every update) replace or extend what the config builds. Everything that can fail without
cost (reward imports, loggers, the model path, SFT files, the data and every reward's arguments) is
checked before the first expensive stage. `resume=True` continues a killed run from its latest checkpoint
(finished stages are not repeated; an interrupted SFT restarts); stage results live in
<output_dir>/pipeline.json.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from appo.config import Config, resolve
from appo.data.prompt_sets import load_prompt_sets, prepare_task, with_task_index
from appo.errors import UserError
from appo.eval.evaluate import evaluate
from appo.files import replace_file
from appo.json_input import read_json_object
from appo.models import check_model_path, load_model, load_tokenizer, merged_state_dict, resolve_device
from appo.precision import resolve_autocast
from appo.rewards import RewardSet, build_rewards
from appo.tools.environment import env_columns
from appo.tools.registry import check_tools, tool_specs, with_tools_prompt
from appo.tools.search_backends import build_backend
from appo.train import checkpoint as ckpt
from appo.train import distributed
from appo.train.report import write_report
from appo.train.sft import train_sft
from appo.train.tracking import check_loggers, log_evaluation
from appo.train.trainer import Trainer, rollout_dir

log = logging.getLogger(__name__)


def preflight(cfg: Config, rewards: RewardSet | Sequence[Any] | None = None) -> RewardSet:
    """What can be checked before anything expensive runs: the model paths, the loggers, the SFT files and
    every reward function's import. Returns the run's rewards. Each problem is one UserError line."""
    check_model_path(cfg.model.path, "model.path")
    if cfg.model.ref_path is not None:
        check_model_path(cfg.model.ref_path, "model.ref_path")
    check_loggers(cfg.trainer.loggers)
    for key, files in (("data.train_files", cfg.data.train_files), ("data.val_files", cfg.data.val_files),
                       ("sft.files", cfg.sft.files if cfg.sft.enabled else [])):
        for i, path in enumerate(files):
            if not str(path).startswith("hf:") and not Path(path).expanduser().exists():
                raise UserError(f"{key}[{i}]: {path}: no such file or folder"
                                f"{' (or set sft.enabled=false)' if key == 'sft.files' else ''}")
    if isinstance(rewards, RewardSet):
        return rewards
    return build_rewards(cfg.algorithm, extra=list(rewards or ()))


def sft_plan(cfg: Config) -> str | None:
    """Why the cold-start SFT does not run (None when it does), said at start-up rather than silently."""
    if not cfg.sft.enabled or sft_runs(cfg):  # sft.enabled=false is the user's own choice: nothing to say
        return None
    return ("no cold-start SFT: this run reads data files and neither sft.files nor sft.trace_key is set, so RL "
            "starts from model.path; a small model may never call the tools (reward stays 0). Give it "
            "conversations (sft.files=[...]) or a column of tool calls to make traces from (sft.trace_key=...; "
            "docs/your-data-and-rewards.md#cold-start-sft), or set sft.enabled=false to silence this")


def sft_runs(cfg: Config) -> bool:
    return cfg.sft.enabled and bool(cfg.sft.files or cfg.data.task is not None or cfg.sft.trace_key)


class Pipeline:
    """The stages of `appo train` with their results persisted, so `--resume` skips finished ones."""

    def __init__(self, cfg: Config, progress: bool = True, *, tools=None,
                 rewards: RewardSet | Sequence[Any] | None = None, engine=None):
        cfg = resolve(cfg)  # a Config built in code gets the same checks and implied keys as a loaded one
        self.cfg, self.progress = cfg, progress and distributed.is_main()
        self.tools, self.engine = tools, engine
        self.rewards = preflight(cfg, rewards)
        if tools is None:
            tool_specs(cfg.tools)  # every tool plug-in loads and has a schema, before anything expensive
            if "search" in cfg.tools.enabled and cfg.data.task is None:
                # A missing index, URL, cache file or API key stops the run now, not after cold-start SFT (a
                # built-in task builds its own index later; a local index opens memory-mapped: cheap).
                build_backend(cfg.tools.search)
        self.out = Path(cfg.trainer.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "pipeline.json"

    def _load_state(self, resume: bool) -> dict:
        if resume and self.state_path.exists():
            return _checked_state(self.state_path)
        return {"evals": {}, "start_path": None, "rl_done": False, "seconds": {}}

    def _save_state(self, state: dict) -> None:
        if not distributed.is_main():
            return
        try:
            replace_file(self.state_path, [json.dumps(state, indent=2)])
        except OSError as e:
            raise UserError(f"{self.state_path}: cannot save the pipeline state ({e.strerror or e}); the previous "
                            "one is kept: free space and continue with --resume") from None
        self._report(state, "running (report rewritten after each stage)")

    @contextmanager
    def _timed(self, state: dict, stage: str):
        """Adds the stage's wall time to pipeline.json's `seconds` (a resumed stage adds to what it had)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            seconds = state.setdefault("seconds", {})
            seconds[stage] = round(seconds.get(stage, 0.0) + time.monotonic() - t0, 1)

    def _report(self, state: dict, status: str) -> Path | None:
        if not distributed.is_main():
            return None
        try:
            return write_report(self.out, _eval_table(state["evals"]), tokenizer=self.tokenizer, status=status,
                                rollouts_dir=rollout_dir(self.cfg))
        except OSError as e:  # a view of the run: a full disk must not stop it (the state's own writes say so)
            log.warning("%s not written (%s)", self.out / "report.md", e.strerror or e)
            return None

    def run(self, resume: bool = False) -> dict:
        """The stages; whatever stops them (an error, Ctrl-C, SIGTERM) still leaves report.md of what ran."""
        def stop(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
        self.tokenizer, self.state = None, self._load_state(resume)
        try:
            return self._run(resume)
        except BaseException as e:
            try:
                self._report(self.state, f"stopped early ({type(e).__name__}{f': {e}' if str(e) else ''}); "
                                         "what ran is below")
            except Exception:  # the report must not hide why the run stopped
                logging.getLogger(__name__).exception("could not write the report")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _run(self, resume: bool) -> dict:
        state = self.state
        task = prepare_task(self.cfg)
        cfg = self.cfg = with_tools_prompt(with_task_index(self.cfg, task))
        device = resolve_device(cfg.trainer.device)
        resolve_autocast(cfg.model.autocast, device)  # once, logged, before any work; SFT and learner reuse it
        tokenizer = self.tokenizer = load_tokenizer(cfg.model.path, cfg.model.cache_dir)
        train, val = load_prompt_sets(cfg, tokenizer, task)
        if self.tools is None:
            check_tools(cfg.tools, train)  # the environment sets up from a real row, or the run stops here
        elif getattr(self.tools, "environment", None) is not None and train:
            self.tools.environment.check(env_columns(train[0]))
        for prompts in (train[:1], val[:1]):  # every reward's arguments, from the data's own columns
            if prompts:
                self.rewards.check_row(prompts[0])
        if distributed.is_main():
            print(f"[appo] {len(train)} training prompts, {len(val)} held-out prompts; output: {self.out}"
                  f"{f'; {distributed.world_size()} processes' if distributed.is_distributed() else ''}", flush=True)
            if (why := sft_plan(cfg)) is not None and state["start_path"] is None:
                log.warning(why)
        torch.manual_seed(cfg.trainer.seed)
        latest = ckpt.resume_checkpoint(self.out) if resume else None
        stages = set(cfg.trainer.eval_stages) if val else set()

        if latest is not None and cfg.model.lora.rank == 0:
            model = load_model(str(latest / "hf"), cfg.model.dtype, device=device)
        else:
            model = load_model(state["start_path"] or cfg.model.path, cfg.model.dtype, cfg.model.cache_dir, device)
        if state["start_path"] is None:
            if "base" in stages and "base" not in state["evals"]:
                with self._timed(state, "eval base"):
                    state["evals"]["base"] = self._eval(model, tokenizer, val, "base")
                self._save_state(state)
            if sft_runs(cfg):
                with self._timed(state, "sft"):
                    state["start_path"] = str(train_sft(cfg, self.out / "sft", model, tokenizer, self.progress,
                                                        task_rows=task.train if task is not None else None,
                                                        prompts=train, tools=self.tools))
                if "sft" in stages:
                    with self._timed(state, "eval sft"):
                        state["evals"]["sft"] = self._eval(model, tokenizer, val, "sft")
            else:
                state["start_path"] = cfg.model.path
            self._save_state(state)

        trainer = Trainer(cfg, model, tokenizer, train, val, start_path=state["start_path"], progress=self.progress,
                          tools=self.tools, rewards=self.rewards, engine=self.engine)
        if state["rl_done"] and latest is not None:
            self._extend_finished_rl(state, int(latest.name.removeprefix("step_")), trainer.total_steps)
        try:
            if not state["rl_done"]:
                with self._timed(state, "rl"):
                    trainer.fit(resume=resume)
                state["rl_done"] = True
                self._save_state(state)
            if "rl" in stages and "rl" not in state["evals"]:
                with self._timed(state, "eval rl"):
                    state["evals"]["rl"] = trainer.validate("rl")
                if distributed.is_main():
                    log_evaluation(self.out, self.cfg.trainer.loggers, "rl", state["evals"]["rl"], trainer.step)
                self._save_state(state)
        finally:
            trainer.close()
        if not distributed.is_main():
            return state
        report = self._report(state, "finished")
        final = ckpt.latest_checkpoint(self.out)
        stages = ", ".join(f"{k} {_minutes(v)}" for k, v in state.get("seconds", {}).items())
        print(f"[appo] time by stage: {stages}; total {_minutes(sum(state.get('seconds', {}).values()))}", flush=True)
        print(f"[appo] done. report: {report}\n[appo] model (Hugging Face dir): {final / 'hf' if final else '-'}\n"
              f"[appo] metrics: {self.out / 'metrics.jsonl'}; rollouts: {rollout_dir(self.cfg)}; "
              f"evaluations: {self.out / 'eval'}", flush=True)
        return state

    def _extend_finished_rl(self, state: dict, reached: int, total: int) -> None:
        """A finished run resumed with a larger total trains on to it (its after-RL evaluation is redone);
        with the same or a smaller one it says why nothing is trained."""
        if reached < total:
            log.info("--resume: continuing the finished run from step %d to step %d (the configured total; "
                     "the LR schedule now decays to it)", reached, total)
            state["rl_done"] = False
            state["evals"].pop("rl", None)
        else:
            log.info("--resume: RL already reached step %d of %d; raise trainer.total_steps to train further",
                     reached, total)

    def _eval(self, model, tokenizer, val, name: str) -> dict:
        """Evaluate the (unsharded) model; under torchrun rank 0 alone, the others wait at a barrier."""
        summary = {}
        if distributed.is_main():
            if self.engine is not None:  # an engine handed in samples with its own copy of the weights
                self.engine.load_weights(lambda: merged_state_dict(model))
            summary = evaluate(model, tokenizer, val, self.cfg, name=name, output_dir=self.out / "eval" / name,
                               engine=self.engine, tools=self.tools, rewards=self.rewards, progress=self.progress)
            log_evaluation(self.out, self.cfg.trainer.loggers, name, summary, 0)  # before any RL step
        distributed.barrier()
        return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# pipeline.json's keys and the types --resume relies on
STATE_TYPES = {"evals": dict, "start_path": (str, type(None)), "rl_done": bool, "seconds": dict}


def _checked_state(path: Path) -> dict:
    """pipeline.json as `--resume` needs it; any other content is an error naming the file (left as it is)."""
    state = read_json_object(path)
    for key, types in STATE_TYPES.items():
        if key == "seconds":
            state.setdefault(key, {})
        if not isinstance(state.get(key), types):
            raise UserError(f"{path}: '{key}' is {'missing' if key not in state else repr(state[key])[:60]}; "
                            "this is not a pipeline.json that `appo train` wrote (move it away to start the run "
                            "over, or restore it)")
    return state


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


EVAL_COLUMNS = ("questions", "acc", "pass@1", "reward", "f1", "tool_use_rate", "tool_calls_per_sample",
                "response_tokens_mean", "truncated_rate")


def _eval_table(evals: dict[str, dict]) -> dict[str, dict]:
    names = {"base": "base model", "sft": "after SFT", "rl": "after RL"}
    return {names.get(k, k): {c: v[c] for c in EVAL_COLUMNS if c in v} for k, v in evals.items()}


def run_pipeline(cfg: Config, *, resume: bool = False, progress: bool = True, tools=None,
                 rewards: RewardSet | Sequence[Any] | None = None, engine=None) -> dict:
    """Run the whole pipeline; returns pipeline.json's state (evaluations by stage, seconds by stage)."""
    return Pipeline(cfg, progress, tools=tools, rewards=rewards, engine=engine).run(resume=resume)
