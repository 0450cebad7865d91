"""The seed's verl launch-script overrides beyond the plain renames in `config.ALIASES`: each is mapped
onto appo's keys (possibly depending on its value), accepted with a note saying what appo does instead
(verl-internal knobs with no meaning here), or refused with the appo key to use.

`translate(key, value)` -> (appo (key, value) pairs to set, note or None); it raises `ValueError` with the
one-line reason for a refused key. No imports from the rest of appo: `config` uses this table.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

ARP = "actor_rollout_ref."

# Plain renames that came with the launch scripts (their meaning is appo's key's meaning).
MAPPED: dict[str, str] = {
    ARP + "actor.ppo_mini_batch_size": "actor.ppo_mini_batch_size",
    ARP + "actor.use_dynamic_bsz": "actor.use_dynamic_bsz",
    ARP + "actor.ppo_max_token_len_per_gpu": "actor.ppo_max_token_len_per_gpu",
    ARP + "actor.ppo_micro_batch_size_per_gpu": "actor.micro_batch_size",
    ARP + "actor.optim.weight_decay": "actor.weight_decay",
    ARP + "actor.optim.lr_warmup_steps": "actor.warmup_steps",
    ARP + "actor.fsdp_config.param_offload": "actor.fsdp.param_offload",
    ARP + "actor.fsdp_config.optimizer_offload": "actor.fsdp.optimizer_offload",
    ARP + "ref.fsdp_config.param_offload": "actor.fsdp.ref_param_offload",
    ARP + "rollout.log_prob_max_token_len_per_gpu": "actor.log_prob_max_token_len_per_gpu",
    ARP + "ref.log_prob_max_token_len_per_gpu": "actor.ref_log_prob_max_token_len_per_gpu",
    ARP + "rollout.tensor_model_parallel_size": "rollout.tensor_parallel_size",
}

# verl-internal knobs with no meaning in appo: accepted whatever their value, with what appo does instead.
NOTED: dict[str, str] = {
    ARP + "model.use_remove_padding": "appo's learner runs the LM head on response positions only and shares "
                                      "each prompt's forward (actor.share_prompts); there is no remove-padding "
                                      "switch",
    ARP + "actor.policy_loss.chunk_size": "appo computes the future-KL discounted sums in one pass; no chunking",
    ARP + "rollout.multi_turn.tool_config_path": "appo configures its tools under tools.* (tools.search.cache_file "
                                                 "for the search cache)",
    ARP + "rollout.log_prob_micro_batch_size_per_gpu": "appo scores with actor.micro_batch_size rows per forward, "
                                                       "or by tokens with actor.use_dynamic_bsz",
    ARP + "ref.log_prob_micro_batch_size_per_gpu": "appo scores with actor.micro_batch_size rows per forward, or by "
                                                   "tokens with actor.use_dynamic_bsz",
    ARP + "rollout.enforce_eager": "appo's vLLM engine chooses eager mode itself",
    ARP + "rollout.free_cache_engine": "appo's vLLM engine keeps its cache between steps",
    "algorithm.kl_ctrl.kl_coef": "the in-reward KL controller is verl's use_kl_in_reward (off in the seed, so this "
                                 "value was unused); appo's KL is the loss term actor.use_kl_loss / "
                                 "actor.kl_loss_coef",
    "algorithm.kl_ctrl.type": "the in-reward KL controller is off in the seed; appo's KL is actor.use_kl_loss",
    "trainer.balance_batch": "appo balances work by giving every rank the same number of prompts and cutting "
                             "micro-batches by length",
    "hydra.run.dir": "appo writes logs, checkpoints and rollouts under trainer.output_dir",
    "ray_init.num_cpus": "appo starts its processes with torchrun, not Ray (trainer.n_gpus_per_node, trainer.nnodes)",
    "ray_init.temp_dir": "appo starts its processes with torchrun, not Ray",
}

# Keys whose one accepted value is what appo always does; another value is refused naming the appo key.
FIXED: dict[str, tuple[Any, str]] = {
    ARP + "rollout.multi_turn.enable": (True, "the tool loop is always on; set tools.enabled=[] for no tools"),
    "reward_model.reward_manager": ("naive", "appo rewards each row with one function: set algorithm.reward_fn"),
    "reward_model.enable": (False, "appo has no reward model; set algorithm.reward_fn (a function, or "
                                   "'module:function')"),
    "trainer.critic_warmup": (0, "appo trains no critic"),
    "algorithm.use_kl_in_reward": (False, "appo applies KL as a loss only: actor.use_kl_loss=true, "
                                          "actor.kl_loss_coef"),
    ARP + "actor.ulysses_sequence_parallel_size": (1, "appo has no sequence parallelism; use "
                                                      "actor.use_dynamic_bsz and model.gradient_checkpointing for "
                                                      "long rows"),
}

# Whole families of verl keys that have no counterpart: refused with what to use instead.
REFUSED_PREFIXES: dict[str, str] = {
    "critic.": "appo trains no critic (GRPO/APPO advantages); drop the critic.* keys",
    "reward_model.": "appo has no reward model; set algorithm.reward_fn",
}

SEARCH_CLASSES = ("BingSearchTool",)
REFERENCE_REWARD_FILE = "deep_research.py"


def _search_class(value: Any) -> tuple[list[tuple[str, Any]], str]:
    name = str(value).rsplit(".", 1)[-1]
    if name not in SEARCH_CLASSES:
        raise ValueError(f"{ARP}rollout.tools.tool_instances.search.class_path={value!r}: appo's search backends "
                         f"are chosen with tools.search.backend (local, cache, brightdata, serper, retriever); "
                         f"known classes: {', '.join(SEARCH_CLASSES)}")
    return [], (f"{ARP}rollout.tools.tool_instances.search.class_path={name}: appo searches with "
                "tools.search.backend (the cache backend when the seed's cache_file is given; brightdata is "
                "the reference's Bing through Bright Data)")


def _search_cache(value: Any) -> tuple[list[tuple[str, Any]], str]:
    return [("tools.search.backend", "cache"), ("tools.search.cache_file", value)], (
        f"{ARP}rollout.tools.tool_instances.search.params.cache_file: appo answers from this JSON cache "
        "(tools.search.backend=cache) and does not fall back to Bing on a miss; for live search set "
        "tools.search.backend=brightdata with tools.search.sqlite_cache")


def _reward_path(value: Any) -> tuple[list[tuple[str, Any]], None]:
    if PurePosixPath(str(value)).name != REFERENCE_REWARD_FILE:
        raise ValueError(f"custom_reward_function.path={value!r}: appo imports reward functions by module; set "
                         f"algorithm.reward_fn='package.module:function'")
    return [("algorithm.reward_fn", "deep_research")], None  # the reference's compute_score, exactly


def _reward_name(value: Any) -> tuple[list[tuple[str, Any]], None]:
    if value != "compute_score":
        raise ValueError(f"custom_reward_function.name={value!r}: set algorithm.reward_fn='package.module:{value}'")
    return [], None  # the function of custom_reward_function.path (deep_research's compute_score)


def _loggers(value: Any) -> tuple[list[tuple[str, Any]], None]:
    names = value if isinstance(value, list) else str(value).strip("[]").replace(",", " ").split()
    # jsonl stays: the report and --resume read metrics.jsonl
    return [("trainer.loggers", ["jsonl", *[str(n).strip().strip("'\"") for n in names if n != "jsonl"]])], None


BY_VALUE = {
    ARP + "rollout.tools.tool_instances.search.class_path": _search_class,
    ARP + "rollout.tools.tool_instances.search.params.cache_file": _search_cache,
    "custom_reward_function.path": _reward_path,
    "custom_reward_function.name": _reward_name,
    "trainer.logger": _loggers,
}


def is_verl_key(key: str) -> bool:
    return (key in MAPPED or key in NOTED or key in FIXED or key in BY_VALUE
            or any(key.startswith(p) for p in REFUSED_PREFIXES))


def translate(key: str, value: Any) -> tuple[list[tuple[str, Any]], str | None]:
    """The appo settings for verl override `key=value` and a note for the start-up log (None when it maps
    plainly). Raises ValueError (one line, naming the appo key) for what appo refuses."""
    if key in MAPPED:
        return [(MAPPED[key], value)], None
    if key in NOTED:
        return [], f"{key} accepted and ignored: {NOTED[key]}"
    if key in FIXED:
        want, why = FIXED[key]
        if value != want and not (isinstance(want, bool) and str(value).lower() == str(want).lower()):
            raise ValueError(f"{key}={value!r} is not supported ({why}); the only accepted value is {want!r}")
        return [], None
    if key in BY_VALUE:
        return BY_VALUE[key](value)
    for prefix, why in REFUSED_PREFIXES.items():
        if key.startswith(prefix):
            raise ValueError(f"{key} is not supported: {why}")
    raise KeyError(key)
