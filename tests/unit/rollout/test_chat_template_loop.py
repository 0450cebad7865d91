"""The tool loop in the chat template's own format (tools.format=chat_template): the token ids of a rollout are
exactly the template's rendering of the same conversation, with the real sandbox running the calls."""

from __future__ import annotations

import json
import types

import pytest
import torch

from appo.formats import build_format
from appo.rollout.tool_loop import LoopStart, RolloutLoopSettings, ToolLoop, run_tool_loop
from appo.tools.base import ToolCall
from tests.unit.rollout.conftest import ScriptedEngine

CODE = "print(17 * 23 - 5)"
SYSTEM = {"role": "system", "content": "Solve it; use the tools."}
USER = {"role": "user", "content": "What is 17 * 23 - 5?"}


def turns(family: str, eos: str) -> list[str]:
    """What the scripted policy writes: a good call, a malformed call, then the answer; each turn ends at EOS."""
    if family == "llama3":
        good, bad = json.dumps({"name": "python", "parameters": {"code": CODE}}), '{"name": "python", "parameters": {"code": '
    else:
        good = "<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": CODE}}) + "\n</tool_call>"
        bad = '<tool_call>\n{"name": "python", "arguments": {"code": \n</tool_call>'
    think = "<think>\nLet me run it.\n</think>\n\n" if family == "qwen3" else ""
    lead = "" if family == "llama3" else think + "I will compute it.\n"
    return [lead + good + eos, bad + eos, think + "The answer is \\boxed{386}." + eos]


def conversation(family: str, script: list[str], eos: str, results: list[str]) -> list[dict]:
    """The same conversation as chat messages, as a user of the template would write it."""
    first = script[0].removesuffix(eos)
    content = "" if family == "llama3" else first[:first.index("<tool_call>")].removesuffix("\n")
    call = {"type": "function", "function": {"name": "python", "arguments": {"code": CODE}}}
    return [SYSTEM, USER,
            {"role": "assistant", "content": content, "tool_calls": [call]},
            {"role": "tool", "name": "python", "content": results[0]},
            {"role": "assistant", "content": script[1].removesuffix(eos)},
            {"role": "tool", "name": "python", "content": results[1]},
            {"role": "assistant", "content": script[2].removesuffix(eos)}]


def scripted(tokenizer, texts: list[str]) -> ScriptedEngine:
    todo = iter(texts)
    return ScriptedEngine(tokenizer, lambda prompt, req: next(todo))


class _Stream:
    """A stream over a scripted engine (the protocol of vLLM's `open_stream`): requests join, `step` answers
    every running one."""

    def __init__(self, engine):
        self.engine, self.running = engine, []

    def add(self, row, request):
        self.running.append((row, request))

    def __len__(self):
        return len(self.running)

    def step(self):
        running, self.running = self.running, []
        return [(row, res) for (row, _), res in zip(running, self.engine.generate([r for _, r in running]))]


def engine_for(kind: str, tok, script: list[str], expected: list[int], model=None):
    """'rounds': a scripted engine, one generate call per round; 'streamed': the same behind a stream (the
    asynchronous loop); 'sessions': the HF engine's continuous batching with KV reuse, on the tiny model made to
    write `expected` token by token (only right if every appended token is where the template puts it)."""
    if kind == "rounds":
        return scripted(tok, script)
    if kind == "streamed":
        engine = scripted(tok, script)
        engine.supports_streaming = True
        engine.open_stream = lambda: _Stream(engine)
        return engine
    from appo.rollout.hf import HFEngine

    assert model is not None
    model.resize_token_embeddings(len(tok))  # llama3: the added special tokens
    return HFEngine(ForcedLM(model, expected), tok)


class ForcedLM(torch.nn.Module):
    """The tiny model (its own KV cache, its own logits) with a large logit added at absolute position p on
    `sequence[p + 1]`: it writes `sequence` wherever its input agrees with it."""

    def __init__(self, inner, sequence: list[int], margin: float = 60.0):
        super().__init__()
        self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config
        self.register_buffer("sequence", torch.tensor(sequence + [sequence[-1]]))
        self.margin = margin

    def forward(self, input_ids, position_ids, logits_to_keep=0, **kw):
        out = self.inner(input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kw)
        if isinstance(logits_to_keep, int):
            pos = position_ids[:, -out.logits.shape[1]:]
        else:
            pos = position_ids[:, logits_to_keep]
        following = self.sequence[(pos + 1).clamp(max=len(self.sequence) - 1)]
        out.logits = out.logits.scatter_add(-1, following.unsqueeze(-1),
                                            torch.full(following.unsqueeze(-1).shape, self.margin))
        return out


@pytest.mark.parametrize("kind", ["rounds", "streamed", "sessions"])
@pytest.mark.parametrize("family", ["chatml", "qwen3", "llama3"])
def test_rollout_tokens_are_the_templates_rendering_of_the_conversation(chat_tokenizer, python_tools, tiny_model,
                                                                        family, kind):
    tok = chat_tokenizer(family)
    specs = list(python_tools.specs.values())
    fmt = build_format("chat_template", tok, specs)
    prompt_ids = fmt.prompt_ids([SYSTEM, USER])
    script = turns(family, tok.eos_token)
    ran = python_tools.run([ToolCall("python", CODE)])[0].text
    error = fmt.parse_calls(script[1])[0].error
    assert "386" in ran and error.startswith("Error: not valid JSON")
    rendered = tok.apply_chat_template(conversation(family, script, tok.eos_token, [ran, error]), tools=fmt.schemas,
                                       tokenize=False)
    rendered = rendered[:rendered.rindex(tok.eos_token) + len(tok.eos_token)]  # the last turn ends at its EOS
    expected = tok(rendered, add_special_tokens=False)["input_ids"]

    stats: dict = {}
    settings = RolloutLoopSettings(max_response_length=1024, call_limit=5, tool_format="chat_template",
                                   temperature=0.0 if kind == "sessions" else 1.0)
    engine = engine_for(kind, tok, script, expected, tiny_model)
    assert bool(getattr(engine, "supports_sessions", False)) == (kind == "sessions")
    [traj] = run_tool_loop(engine, python_tools, [LoopStart.fresh(prompt_ids)], settings, stats)

    assert traj.prompt_ids + traj.token_ids == expected
    # every sampled token is the policy's (mask 1), every appended one is not
    sampled = sum(len(tok.encode(t, add_special_tokens=False)) for t in script)
    assert sum(traj.generated) == sampled and len(traj) > sampled
    assert traj.finish_reason == "eos" and traj.tool_calls == 2
    assert [(e["tool"], e["ok"]) for e in traj.tool_log] == [("python", True), ("", False)]
    assert stats["tool_calls"] == 1 and stats["bad_calls"] == 1 and stats["bad_calls/json"] == 1


def test_several_calls_in_one_turn_run_and_come_back_in_one_user_turn(chat_tokenizer, python_tools):
    tok = chat_tokenizer("chatml")
    calls = "\n".join("<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": f"print({i} * 7)"}})
                      + "\n</tool_call>" for i in (2, 3))
    script = [calls + "<|im_end|>", "Done.<|im_end|>"]
    settings = RolloutLoopSettings(max_response_length=512, tool_format="chat_template")
    fmt = build_format("chat_template", tok, list(python_tools.specs.values()))
    [traj] = run_tool_loop(scripted(tok, script), python_tools, [LoopStart.fresh(fmt.prompt_ids([USER]))], settings)
    text = traj.response_text(tok, skip_special_tokens=False)
    assert text.count("<|im_start|>user") == 1 and text.index("14") < text.index("21")
    assert traj.tool_calls == 2 and [e["ok"] for e in traj.tool_log] == [True, True]
    assert len({(e["start"], e["end"]) for e in traj.tool_log}) == 1


def test_a_branch_split_inside_a_turn_that_made_a_call_continues_it(chat_tokenizer, python_tools):
    """APPO's branch copies a prefix that ends inside (or at the EOS of) a turn with a call; the continuation
    finishes that turn, and its call runs as if the branch had written all of it."""
    tok = chat_tokenizer("chatml")
    fmt = build_format("chat_template", tok, list(python_tools.specs.values()))
    prompt_ids = fmt.prompt_ids([USER])
    call = "<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": CODE}}) + "\n</tool_call><|im_end|>"
    settings = RolloutLoopSettings(max_response_length=512, tool_format="chat_template")
    [parent] = run_tool_loop(scripted(tok, [call, "It is 386.<|im_end|>"]), python_tools,
                             [LoopStart.fresh(prompt_ids)], settings)
    first_result = parent.tool_log[0]["start"]
    turn = tok.decode(parent.token_ids[:first_result], skip_special_tokens=False)
    assert turn == call

    # split inside the call's JSON: the branch writes the rest of the turn, then answers differently
    cut = next(i for i in range(first_result) if "17" in tok.decode(parent.token_ids[:i + 1]))
    rest = tok.decode(parent.token_ids[cut + 1:first_result], skip_special_tokens=False)
    branch = parent.prefix(cut + 1)
    branch.kind, branch.split_pos = "branch", cut
    # split at the EOS that ended the call's turn: the call is due at once
    at_eos = parent.prefix(first_result)
    at_eos.kind, at_eos.split_pos = "branch", first_result - 1
    for start, script, answer in ((branch, [rest, "Branch says 386.<|im_end|>"], "Branch says 386."),
                                  (at_eos, ["EOS branch: 386.<|im_end|>"], "EOS branch: 386.")):
        loop = ToolLoop(scripted(tok, script), python_tools, settings)
        row = loop.add(LoopStart(start))
        assert (row.pending_stop is not None) == (start is at_eos) and not row.done
        loop.run()
        t = row.traj
        assert t.token_ids[:first_result] == parent.token_ids[:first_result]
        assert t.tool_calls == 1 and t.tool_log[0]["ok"] and t.finish_reason == "eos"
        assert t.token_ids[first_result:t.tool_log[0]["end"]] == parent.token_ids[first_result:parent.tool_log[0]["end"]]
        assert tok.decode(t.token_ids[t.tool_log[0]["end"]:], skip_special_tokens=True) == answer


class CallTurnEngine(ScriptedEngine):
    """A policy that writes CALL, then (after its result) ANSWER, continuing whatever part of the turn a
    prefix already holds; the tokens of a call turn get the highest entropies, so APPO branches inside it."""

    CALL = "I will compute it.\n<tool_call>\n" + json.dumps({"name": "python", "arguments": {"code": CODE}}) \
        + "\n</tool_call><|im_end|>"
    ANSWER = "The answer is \\boxed{386}.<|im_end|>"

    def __init__(self, tokenizer):
        super().__init__(tokenizer, self.write)

    def write(self, prompt: str, req) -> str:
        current = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
        target = self.ANSWER if "<tool_response>" in prompt else self.CALL
        assert target.startswith(current), (current, target)
        return target[len(current):]

    def generate(self, requests):
        results = super().generate(requests)
        for res in results:
            in_call = "</tool_call>" in self.tokenizer.decode(res.token_ids, skip_special_tokens=False)
            res.entropies = [(3.0 if in_call else 0.1) + 0.01 * i for i in range(len(res.token_ids))]
        return results


def test_appo_branches_split_inside_a_turn_that_made_a_call(chat_tokenizer, python_tools):
    """sample_groups with APPO in the chat-template format: the branch points fall inside the call turn; every
    branch finishes that turn from its copied prefix, its call runs, and its row is the parent's call turn
    and result followed by its own answer."""
    from appo.rollout.sampling import sample_groups
    from tests.unit.rollout.conftest import make_cfg

    tok = chat_tokenizer("chatml")
    fmt = build_format("chat_template", tok, list(python_tools.specs.values()))
    prompt = types.SimpleNamespace(prompt_ids=fmt.prompt_ids([SYSTEM, USER]), index=0)
    cfg = make_cfg(**{"rollout.n": 4, "rollout.initial_rollouts": 2, "rollout.max_response_length": 256,
                      "rollout.appo.fv_source": "none", "tools.format": "chat_template", "tools.enabled": "[python]"})
    [group], metrics = sample_groups(CallTurnEngine(tok), python_tools, [prompt], cfg)
    assert len(group.branches) == 2
    for branch in group.branches:
        parent = group.inits[branch.parent]
        call_end = parent.tool_log[0]["start"]
        assert branch.split_pos < call_end - 1  # inside the call turn, before its EOS
        assert branch.tool_calls == 1 and branch.tool_log[0]["ok"] and branch.finish_reason == "eos"
        assert tok.decode(branch.token_ids[:call_end], skip_special_tokens=False) == CallTurnEngine.CALL
        assert branch.token_ids[call_end:branch.tool_log[0]["end"]] == parent.token_ids[call_end:parent.tool_log[0]["end"]]
        assert branch.generated[call_end:branch.tool_log[0]["end"]] == [0] * (branch.tool_log[0]["end"] - call_end)
    assert metrics["rollout/tool_calls"] == 4 and "rollout/bad_calls" not in metrics


def test_smollm2_runs_in_this_format_with_the_shipped_chatml_template(smollm2_tokenizer, python_tools):
    """SmolLM2's own ChatML template has no tools: the probe refuses it and names chatml; with chatml a
    rollout is token for token the rendering of its conversation, on SmolLM2's real tokenizer."""
    from appo.errors import UserError

    specs = list(python_tools.specs.values())
    from appo.models import load_tokenizer, resolve_model_path

    smollm2_tokenizer("chatml")  # converts the model into the cache once
    own = load_tokenizer(resolve_model_path("smollm2-135m-instruct"))
    assert own.chat_template and "<|im_start|>" in own.chat_template
    with pytest.raises(UserError, match="tools.chat_template=chatml"):
        build_format("chat_template", own, specs)
    tok = smollm2_tokenizer("chatml")
    fmt = build_format("chat_template", tok, specs)
    script = turns("chatml", tok.eos_token)
    settings = RolloutLoopSettings(max_response_length=1024, call_limit=5, tool_format="chat_template")
    [traj] = run_tool_loop(scripted(tok, script), python_tools, [LoopStart.fresh(fmt.prompt_ids([SYSTEM, USER]))],
                           settings)
    ran = python_tools.run([ToolCall("python", CODE)])[0].text
    rendered = tok.apply_chat_template(conversation("chatml", script, tok.eos_token, [ran, fmt.parse_calls(script[1])[0].error]),
                                       tools=fmt.schemas, tokenize=False)
    rendered = rendered[:rendered.rindex(tok.eos_token) + len(tok.eos_token)]
    assert traj.prompt_ids + traj.token_ids == tok(rendered, add_special_tokens=False)["input_ids"]


def test_arpo_branches_from_the_end_of_a_chat_template_tool_result(chat_tokenizer, python_tools):
    """ARPO copies a row up to the end of a tool result, which in this format ends with the template's next
    generation prompt: the copy answers from there, and its row is the parent's up to that point."""
    from appo.rollout.sampling import sample_groups
    from tests.unit.rollout.conftest import make_cfg

    tok = chat_tokenizer("chatml")
    fmt = build_format("chat_template", tok, list(python_tools.specs.values()))
    prompt = types.SimpleNamespace(prompt_ids=fmt.prompt_ids([SYSTEM, USER]), index=0)
    cfg = make_cfg(**{"algorithm.name": "arpo", "rollout.n": 3, "rollout.initial_rollouts": 2,
                      "rollout.max_response_length": 256, "rollout.arpo.beam_size": 2,
                      "rollout.arpo.branch_probability": 1.0, "tools.format": "chat_template",
                      "tools.enabled": "[python]"})
    [group], metrics = sample_groups(CallTurnEngine(tok), python_tools, [prompt], cfg, draw=lambda: 0.0)
    [copy] = group.branches
    parent = group.inits[copy.parent]
    assert copy.split_pos == parent.tool_log[0]["end"] - 1
    assert tok.decode(copy.token_ids[:copy.split_pos + 1], skip_special_tokens=False).endswith(
        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert copy.token_ids[:copy.split_pos + 1] == parent.token_ids[:copy.split_pos + 1]
    assert copy.tool_calls == 1 and copy.finish_reason == "eos"
    assert tok.decode(copy.token_ids[copy.split_pos + 1:], skip_special_tokens=False) == CallTurnEngine.ANSWER
