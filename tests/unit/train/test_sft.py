"""Cold-start SFT: rollout-identical encoding, masks, packing, and that training lowers the loss."""

from __future__ import annotations

import pytest
import torch

from appo.config import ModelConfig, SftConfig
from appo.tool_format import result_token_ids
from appo.train.sft import _pack, collate, encode_conversation, run_sft, sft_loss, shared_start

SHAREGPT = {"conversations": [
    {"from": "system", "value": "Use tools."},
    {"from": "human", "value": "Calculate 12 * 7."},
    {"from": "gpt", "value": "<think>Use python.</think><python>print(12 * 7)</python>"
                             " <result>\n84\n</result><answer>\\boxed{84}</answer>"},
]}
MESSAGES = {"messages": [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Calculate 12 * 7."},
    {"role": "assistant", "content": "<think>Use python.</think><python>print(12 * 7)</python>"},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "<answer>\\boxed{84}</answer>"},
]}


def _conv(a: int, b: int, system: str | None = None) -> dict:
    return {"messages": [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": f"Calculate {a} + {b}."},
        {"role": "assistant", "content": f"<think>Use python.</think><python>print({a} + {b})</python>"},
        {"role": "tool", "content": str(a + b)},
        {"role": "assistant", "content": f"<answer>\\boxed{{{a + b}}}</answer>"},
    ]}


def test_encoding_is_the_rollout_token_sequence(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = encode_conversation(tok, SHAREGPT)
    prompt = tok.encode(tok.apply_chat_template([{"role": "system", "content": "Use tools."},
                                                 {"role": "user", "content": "Calculate 12 * 7."}],
                                                add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    gen1 = tok.encode("<think>Use python.</think><python>print(12 * 7)</python>", add_special_tokens=False)
    result = result_token_ids(tok, "84")
    gen2 = tok.encode("<answer>\\boxed{84}</answer>", add_special_tokens=False)
    assert ex.prompt_ids == prompt
    assert ex.response_ids == gen1 + result + gen2 + [tok.eos_token_id]
    assert ex.loss_mask == [1] * len(gen1) + [0] * len(result) + [1] * (len(gen2) + 1)


def test_sharegpt_inline_and_messages_tool_turns_agree(tiny_tokenizer):
    a, b = encode_conversation(tiny_tokenizer, SHAREGPT), encode_conversation(tiny_tokenizer, MESSAGES)
    assert (a.prompt_ids, a.response_ids, a.loss_mask) == (b.prompt_ids, b.response_ids, b.loss_mask)


def test_bad_rows_are_explained(tiny_tokenizer):
    with pytest.raises(ValueError, match="'messages' or 'conversations'"):
        encode_conversation(tiny_tokenizer, {"text": "hi"})
    with pytest.raises(ValueError, match="unknown turn role 'bot'"):
        encode_conversation(tiny_tokenizer, {"conversations": [{"from": "bot", "value": "x"}]})


def test_collate_targets_only_generated_tokens(tiny_tokenizer):
    ex = encode_conversation(tiny_tokenizer, MESSAGES)
    batch = collate([[ex]], tiny_tokenizer.pad_token_id)
    trained = batch["targets"][0][batch["targets"][0] >= 0].tolist()
    assert trained == [t for t, m in zip(ex.response_ids, ex.loss_mask, strict=True) if m]


def test_packing_gives_the_padded_loss(tiny_model, tiny_tokenizer):
    examples = [encode_conversation(tiny_tokenizer, _conv(a, b)) for a, b in ((3, 4), (10, 25), (7, 700))]
    packed = _pack(examples, max_length=1000)
    assert len(packed) == 1
    with torch.no_grad():
        loss_p, n_p = sft_loss(tiny_model, collate(packed, tiny_tokenizer.pad_token_id))
        loss_d, n_d = sft_loss(tiny_model, collate([[e] for e in examples], tiny_tokenizer.pad_token_id))
    assert n_p == n_d
    torch.testing.assert_close(loss_p, loss_d, rtol=1e-5, atol=1e-4)


def test_a_shared_system_prompt_runs_once_per_packed_row_with_the_same_loss_and_gradient(tiny_model_dir,
                                                                                          tiny_tokenizer):
    from appo.models import load_model

    system = "You solve arithmetic with the python tool and answer in a box."
    examples = [encode_conversation(tiny_tokenizer, _conv(a, b, system)) for a, b in ((3, 4), (10, 25), (7, 700))]
    shared = shared_start(examples)
    assert shared > len(tiny_tokenizer.encode(system)) - 1  # at least the system prompt
    assert shared < min(len(e.prompt_ids) for e in examples)
    whole = collate(_pack(examples, 1000), tiny_tokenizer.pad_token_id)
    packed = collate(_pack(examples, 1000, shared), tiny_tokenizer.pad_token_id, shared)
    assert packed["input_ids"].shape[1] == whole["input_ids"].shape[1] - 2 * shared
    out = []
    for batch in (whole, packed, collate([[e] for e in examples], tiny_tokenizer.pad_token_id)):
        model = load_model(str(tiny_model_dir))
        loss, n = sft_loss(model, batch)
        loss.backward()
        out.append((float(loss), n, torch.cat([p.grad.flatten() for p in model.parameters()])))
    for loss, n, grad in out[1:]:
        assert n == out[0][1]
        assert loss == pytest.approx(out[0][0], rel=1e-5)
        assert float((grad - out[0][2]).abs().max()) <= 1e-4 * float(out[0][2].abs().max())  # float rounding


@pytest.mark.parametrize("packing", [False, True])
def test_sft_lowers_the_loss_on_the_tiny_model(tiny_model, tiny_tokenizer, packing):
    convs = [_conv(a, 2 * a + 1) for a in range(16)]
    cfg = SftConfig(num_examples=16, epochs=4, batch_size=8, lr=3e-3, warmup_steps=0, max_length=256,
                    packing=packing)
    history = run_sft(tiny_model, tiny_tokenizer, convs, cfg, ModelConfig(autocast="none"), progress=False)
    assert len(history) == 8
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]


def test_generated_task_traces_encode_like_the_data_module(tiny_tokenizer):
    from appo.data.tasks import build_task
    from appo.data.traces import encode_trace, make_sft_traces

    rows = build_task("arithmetic", num_train=8, num_val=2, seed=3).train
    traces = make_sft_traces(rows, 6, seed=0, p_notool=0.3)
    for trace in traces:
        ex = encode_conversation(tiny_tokenizer, trace)
        ids, mask = encode_trace(trace, tiny_tokenizer)
        assert ex.prompt_ids + ex.response_ids == ids
        assert [0] * len(ex.prompt_ids) + ex.loss_mask == mask
        if trace["variant"] != "notool":  # notool traces split <think>/<answer> into separately tokenised segments
            plain = encode_conversation(tiny_tokenizer, {"messages": trace["messages"]})  # inline <result> parsing
            assert plain.response_ids == ex.response_ids and plain.loss_mask == ex.loss_mask


# ------------------------------------------------------------------------- tools.format=chat_template


def _chat_conv(a: int, b: int) -> dict:
    """A user's own SFT row in the chat-template format: OpenAI-style tool_calls, a tool message answering it."""
    return {"messages": [
        {"role": "user", "content": f"Calculate {a} + {b}."},
        {"role": "assistant", "content": "<think>Use python.</think>",
         "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": f"print({a} + {b})"}}}]},
        {"role": "tool", "name": "python", "content": str(a + b)},
        {"role": "assistant", "content": f"<answer>\\boxed{{{a + b}}}</answer>"},
    ]}


@pytest.fixture()
def chat_fmt(chat_tokenizer):
    from appo.formats import build_format
    from appo.tools.registry import BUILTIN_TOOLS

    return build_format("chat_template", chat_tokenizer("chatml"), [BUILTIN_TOOLS["python"].spec])


def test_a_chat_conversation_is_encoded_as_the_loop_builds_it(chat_fmt):
    from appo.formats.conversation import encode_chat

    conv = _chat_conv(12, 7)
    ex = encode_conversation(chat_fmt.tokenizer, conv, fmt=chat_fmt)
    assert (ex.prompt_ids, ex.response_ids, ex.loss_mask) == encode_chat(chat_fmt, conv["messages"])
    assert ex.response_ids[-1] == chat_fmt.tokenizer.eos_token_id and 0 in ex.loss_mask
    short = encode_conversation(chat_fmt.tokenizer, conv, max_length=len(ex.prompt_ids) + 5, fmt=chat_fmt)
    assert short.response_ids == ex.response_ids[:5] and short.loss_mask == ex.loss_mask[:5]


def test_tool_calls_need_the_chat_template_format_and_traces_their_own(chat_fmt, tiny_tokenizer):
    with pytest.raises(ValueError, match="train it with tools.format=chat_template"):
        encode_conversation(tiny_tokenizer, _chat_conv(1, 2))
    with pytest.raises(ValueError, match="made for tools.format=tags cannot be trained with tools.format=chat_template"):
        encode_conversation(chat_fmt.tokenizer, {**MESSAGES, "segments": []}, fmt=chat_fmt)
    with pytest.raises(ValueError, match="made for tools.format=chat_template cannot be trained with tools.format=tags"):
        encode_conversation(tiny_tokenizer, {**_chat_conv(1, 2), "tool_format": "chat_template"})


def test_sft_in_the_chat_template_format_lowers_the_loss_on_the_tiny_model(tiny_model, chat_fmt):
    convs = [_chat_conv(a, 2 * a + 1) for a in range(16)]
    cfg = SftConfig(num_examples=16, epochs=4, batch_size=8, lr=3e-3, warmup_steps=0, max_length=512, packing=True)
    history = run_sft(tiny_model, chat_fmt.tokenizer, convs, cfg, ModelConfig(autocast="none"), progress=False,
                      fmt=chat_fmt)
    assert len(history) == 8
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]


def test_a_max_length_that_cuts_every_conversation_is_one_line_naming_the_key(tmp_path, tiny_model_dir):
    """`appo sft` with sft.max_length shorter than every conversation's prompt: one line naming sft.max_length
    and exit 2, before any training (it was a ValueError traceback)."""
    import json

    from tests.unit.appo_cli import run_appo

    data = tmp_path / "conv.jsonl"
    row = {"messages": [{"role": "user", "content": "Calculate 17 * 23 - 5, please, and show your work. " * 4},
                        {"role": "assistant", "content": "<answer>\\boxed{386}</answer>"}]}
    data.write_text(json.dumps(row) + "\n")
    proc = run_appo("sft", "--config", "tiny", "--output", str(tmp_path / "out"), f"model.path={tiny_model_dir}",
                    f"sft.files=[{data}]", "sft.max_length=16", "sft.packing=false",
                    f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "sft.max_length=16" in proc.stderr, proc.stderr[-2000:]
