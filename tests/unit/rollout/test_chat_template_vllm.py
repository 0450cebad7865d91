"""The chat-template format on vLLM, streamed and round by round: a rollout with a good and a malformed call is
token for token the template's rendering of its conversation (so vLLM's outputs keep the EOS that ends a turn,
and what the loop appends after it is where the template puts it). Model: the tiny model, made to write the
expected tokens by a vLLM logits processor (the ForcedLM of test_chat_template_loop, as vLLM runs it).

Needs the optional vllm extra (a separate venv on CPU: see README "vLLM"); skips without it."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.formats import build_format, template_source  # noqa: E402
from appo.models import build_tiny, load_tokenizer  # noqa: E402
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, run_tool_loop  # noqa: E402
from appo.rollout.vllm import VLLMEngine  # noqa: E402
from appo.tools.base import ToolCall  # noqa: E402

from .test_chat_template_loop import CODE, SYSTEM, USER, conversation, turns  # noqa: E402


def forcing(sequence: list[int], margin: float = 60.0) -> type:
    """A vLLM logits processor that adds `margin` to `sequence[p + 1]` at absolute position p."""
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    def force(prompt_ids, output_ids, logits):
        pos = len(prompt_ids) + len(output_ids)
        logits[sequence[min(pos, len(sequence) - 1)]] += margin
        return logits

    return type("Forced", (AdapterLogitsProcessor,), {"is_argmax_invariant": lambda self: False,
                                                      "new_req_logits_processor": lambda self, params: force})


def test_vllm_rollouts_are_the_templates_rendering(tmp_path_factory, python_tools):
    path = build_tiny(tmp_path_factory.mktemp("chat") / "tiny")
    tok = load_tokenizer(str(path))
    tok.chat_template = template_source("chatml")
    tok.save_pretrained(path)  # vLLM reads the same tokenizer
    fmt = build_format("chat_template", tok, list(python_tools.specs.values()))
    script = turns("chatml", tok.eos_token)
    ran = python_tools.run([ToolCall("python", CODE)])[0].text
    rendered = tok.apply_chat_template(conversation("chatml", script, tok.eos_token,
                                                    [ran, fmt.parse_calls(script[1])[0].error]),
                                       tools=fmt.schemas, tokenize=False)
    rendered = rendered[:rendered.rindex(tok.eos_token) + len(tok.eos_token)]
    expected = tok(rendered, add_special_tokens=False)["input_ids"]

    engine = VLLMEngine(str(path), tok, dtype="float32", max_model_len=2048, enforce_eager=True,
                        logits_processors=[forcing(expected)])
    settings = RolloutLoopSettings(max_response_length=1024, call_limit=5, tool_format="chat_template",
                                   temperature=0.0)
    for streamed in (True, False):
        engine.supports_streaming = streamed
        stats: dict = {}
        [traj] = run_tool_loop(engine, python_tools, [LoopStart.fresh(fmt.prompt_ids([SYSTEM, USER]))], settings,
                               stats)
        assert traj.prompt_ids + traj.token_ids == expected, streamed
        assert traj.finish_reason == "eos" and traj.tool_calls == 2 and stats["bad_calls/json"] == 1
