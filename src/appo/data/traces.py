"""Cold-start SFT conversations for the built-in tasks, in the same token layout the rollout produces.

A trace is one assistant turn split into segments:

    <think>Use python.</think><python>print(12 * 3)</python>      model text    (trained)
     <result>\\n36\\n</result>                                      tool result   (not trained)
    <answer>\\boxed{36}</answer>                                    model text    (trained), then EOS

`messages` holds the same turn as plain text (sharegpt/messages format); `segments` says what is
trained. `encode_trace` tokenizes each segment on its own, exactly as the rollout does (model text
generated up to the stop string, the result spliced with the rollout's own `result_token_ids`), so an
SFT example and a rollout of the same behaviour are the same token ids.

Tool results are real: calls go through the `ToolRunner` you pass (the sandbox, the BM25 index); without
one, python results are computed here by evaluating the (generated, arithmetic-only) expression, which
prints exactly what the interpreter prints, and search traces are refused. A search step whose result
does not contain the fact it relies on is not turned into a trace (the row is skipped).

Headroom knobs (quickstart_calibration.md): `p_notool` answers directly without the tool (the greedy SFT
policy then often skips the tool, and RL has something to fix); `p_wrong` runs a corrupted arithmetic
expression (one digit changed) and answers with its real, wrong output.

With `tool_format="chat_template"` a trace is a tool-calling conversation instead (no segments): each step is an
assistant message `{content: "<think>...</think>", tool_calls: [...]}` (the call's arguments as the tool's schema
names them) followed by a `tool` message with the real result, and the answer is the last assistant message.
`encode_trace` lays it out as the rollout loop builds it (`appo.formats.conversation`).

`study` rows (appo.data.study_task) always use the tools; their imperfect traces show the right kind of
procedure with one flaw, so what RL has left to learn is how to search and compute, not whether to:
`p_skip` leaves out one search and uses a guessed year (a missing step), `p_query` sends the near-miss
query of one step and uses the year the distractor states (a wrong query), `p_wrong` changes one digit
of one number in the python cell (an arithmetic slip). Each trace has at most one flaw.
"""

from __future__ import annotations

import random
import re

from appo.data.study_task import STUDY_SOURCE
from appo.data.tasks import evaluate_expression
from appo.data.templates import resolve_system_prompt
from appo.formats.conversation import call, encode_chat
from appo.tool_format import RESULT_TEMPLATE, escape_tags, result_token_ids

NOTOOL_THINK = "Easy."
_PRINTED = re.compile(r"print\((.*)\)", re.DOTALL)


def _local_python(payload: str) -> str:
    match = _PRINTED.fullmatch(payload)
    if match is None:
        raise ValueError(f"without a ToolRunner only print(<arithmetic>) cells can be run, got {payload!r}")
    return str(evaluate_expression(match.group(1)))


def _corrupt(expr: str, rng: random.Random) -> str | None:
    """`expr` with one digit changed so that its value changes and it still runs; None if no such digit."""
    value = evaluate_expression(expr)
    positions = [i for i, ch in enumerate(expr) if ch.isdigit()]
    rng.shuffle(positions)
    for i in positions:
        leading = i == 0 or not expr[i - 1].isdigit()
        choices = [d for d in "0123456789" if d != expr[i] and not (leading and d == "0")]
        wrong = expr[:i] + rng.choice(choices) + expr[i + 1 :]
        try:
            if evaluate_expression(wrong) != value:
                return wrong
        except ZeroDivisionError:
            continue
    return None


def _run_calls(calls: list[tuple[str, str]], tools) -> list[tuple[str, bool]]:
    if tools is not None:
        from appo.tools.base import ToolCall

        return [(r.text, r.ok) for r in tools.run([ToolCall(tool, payload) for tool, payload in calls])]
    if any(tool != "python" for tool, _ in calls):
        raise ValueError(
            "search traces need the real search tool: pass tools=build_tools(cfg.tools) with a "
            "search index over the task's corpus"
        )
    return [(_local_python(payload), True) for _, payload in calls]


def make_sft_traces(
    rows: list[dict],
    n: int,
    seed: int = 0,
    p_notool: float = 0.0,
    p_wrong: float = 0.0,
    tools=None,
    system_prompt: str | None = None,
    p_skip: float = 0.0,
    p_query: float = 0.0,
    tool_format: str = "tags",
) -> list[dict]:
    """`n` traces from built-in task rows (cycled in a seeded order), with real tool results.

    `system_prompt` replaces the rows' system prompt as `data.system_prompt` does (None keeps it), so the
    traces' prompts match the RL prompts. Returns dicts with messages, segments, data_source,
    ground_truth, index and variant ('tool' | 'notool' | 'wrong', and for study rows 'skip' | 'query').
    `tool_format` ('tags' | 'chat_template', `tools.format`) picks how calls and results are written; a
    chat-template trace has `tool_format` set and no segments.
    """
    if tool_format not in ("tags", "chat_template"):
        raise ValueError(f"tool_format={tool_format!r} is not valid; choose one of: tags, chat_template")
    for name, p in (("p_notool", p_notool), ("p_wrong", p_wrong), ("p_skip", p_skip), ("p_query", p_query)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}={p} must be within [0, 1]")
    usable = [r for r in rows if r.get("extra_info", {}).get("plan")]
    if not usable:
        raise ValueError(
            "no rows with a tool plan: traces are made from built-in task rows (appo.data.tasks)"
        )
    if any(r["data_source"] == STUDY_SOURCE for r in usable):
        if p_notool > 0:
            raise ValueError(f"study traces always use the tools: p_notool={p_notool} must be 0 (sft.p_notool=0)")
        if p_skip + p_query + p_wrong > 1:
            raise ValueError(f"p_skip + p_query + p_wrong = {p_skip + p_query + p_wrong} must be <= 1")
    rng = random.Random(seed)
    order = list(range(len(usable)))
    rng.shuffle(order)
    traces: list[dict] = []
    attempts = 0
    while len(traces) < n:
        if attempts >= 2 * n + len(usable):
            raise RuntimeError(
                f"only {len(traces)} of {n} traces could be made: the tool results did not "
                f"contain the facts the plans need (is the search index built over the task corpus?)"
            )
        plans = []
        for _ in range(n - len(traces)):
            row = usable[order[attempts % len(order)]]
            attempts += 1
            if row["data_source"] == STUDY_SOURCE:
                plans.append(_study_plan(row, rng, p_skip, p_query, p_wrong))
            else:
                plans.append(_plan(row, rng, p_notool, p_wrong))
        calls = [(step["tool"], step["payload"]) for _, _, steps in plans for step in steps]
        results = iter(_run_calls(calls, tools))
        for row, variant, steps in plans:
            outputs = [next(results) for _ in steps]
            names = tuple(tools.names) if tools is not None else tuple(sorted({s["tool"] for s in steps}))
            specs = tool_specs_of(tools) if tool_format == "chat_template" else None
            trace = _trace(row, variant, steps, outputs, system_prompt, names, specs)
            if trace is not None:
                traces.append(trace)
    return traces


def _plan(row: dict, rng: random.Random, p_notool: float, p_wrong: float) -> tuple[dict, str, list[dict]]:
    if rng.random() < p_notool:
        return row, "notool", []
    steps = [dict(step) for step in row["extra_info"]["plan"]]
    expr = row["extra_info"].get("expression")
    if expr is not None and rng.random() < p_wrong and (wrong := _corrupt(expr, rng)) is not None:
        steps[0]["payload"] = f"print({wrong})"
        return row, "wrong", steps
    return row, "tool", steps


def _study_plan(row: dict, rng: random.Random, p_skip: float, p_query: float, p_slip: float
                ) -> tuple[dict, str, list[dict]]:
    """The row's procedure with at most one flaw; each step's think says what the step before it found
    (with the value the flawed procedure believes), then what this step looks for."""
    plan = [dict(step) for step in row["extra_info"]["plan"]]
    numbered = [i for i, step in enumerate(plan) if "var" in step]
    u = rng.random()
    variant = "skip" if u < p_skip else "query" if u < p_skip + p_query else \
        "wrong" if u < p_skip + p_query + p_slip else "tool"
    values = {plan[i]["var"]: plan[i]["value"] for i in numbered}
    flawed = rng.choice(numbered)
    if variant == "skip":
        values[plan[flawed]["var"]] += rng.choice([-1, 1]) * rng.randint(1, 40)
    elif variant == "query":
        plan[flawed] = {**plan[flawed], "payload": plan[flawed]["near"]["payload"],
                        "fact": plan[flawed]["near"]["fact"]}
        values[plan[flawed]["var"]] = plan[flawed]["near"]["value"]
    code = plan[-1]["expr"].format(**values)
    if variant == "wrong":
        code = _corrupt(code, rng) or code
    plan[-1] = {**plan[-1], "payload": f"print({code})"}
    steps, known = [], ""
    for i, step in enumerate(plan):
        if variant == "skip" and i == flawed:  # believed without looking it up
            known += step["read"].format(value=values[step["var"]]) + " "
            continue
        steps.append({**step, "think": known + step["think"]})
        known = step["read"].format(value=values.get(step.get("var"), "")) + " " if "read" in step else ""
    return row, variant, steps


def tool_specs_of(tools) -> dict:
    """The tools' specs by name: the runner's, else the built-ins' (traces made without a runner)."""
    from appo.tools.registry import BUILTIN_TOOLS

    return getattr(tools, "specs", None) or {name: b.spec for name, b in BUILTIN_TOOLS.items()}


def chat_call(specs: dict, tool: str, payload: str) -> dict:
    """A `tool_calls` entry for a call written in the tag format's payload: the arguments the tool's schema
    names (python: {"code": ...}, search: {"query": ...}, a JSON object for tools with several)."""
    spec = specs.get(tool)
    if spec is None:
        raise ValueError(f"no spec for tool '{tool}': its call cannot be written as a chat-template tool call")
    return call(tool, spec.parse(payload))


def _chat_turns(steps: list[dict], outputs: list[tuple[str, bool]], answer: str, specs: dict) -> list[dict]:
    """The response as chat messages: per step an assistant turn that thinks and calls, and the tool's
    result; then the answer."""
    turns: list[dict] = []
    for step, (output, _) in zip(steps, outputs, strict=True):
        tool = step["tool"]
        turns.append({"role": "assistant", "content": f"<think>{step['think']}</think>",
                      "tool_calls": [chat_call(specs, tool, step["payload"])]})
        turns.append({"role": "tool", "name": tool, "content": output})
    think = "" if steps else f"<think>{NOTOOL_THINK}</think>"
    return turns + [{"role": "assistant", "content": f"{think}<answer>\\boxed{{{answer}}}</answer>"}]


def _trace(
    row: dict, variant: str, steps: list[dict], outputs: list[tuple[str, bool]], system_prompt: str | None,
    tool_names: tuple[str, ...] = (), chat_specs: dict | None = None,
) -> dict | None:
    """A trace in the tag format, or with `chat_specs` (the tools' specs by name) as a chat conversation."""
    gold = row["reward_model"]["ground_truth"]
    if any(not ok or ("fact" in step and step["fact"] not in output)
           for step, (output, ok) in zip(steps, outputs, strict=True)):
        return None
    # Arithmetic answers copy the interpreter's output (wrong for a corrupted expression); search answers
    # name the entity the last retrieved fact states.
    answer = outputs[-1][0] if steps and steps[-1]["tool"] == "python" else gold
    messages = _prompt_messages(row, system_prompt)
    about = {"data_source": row["data_source"], "ground_truth": gold, "index": row["extra_info"]["index"],
             "variant": variant}
    if chat_specs is not None:
        return {"messages": messages + _chat_turns(steps, outputs, answer, chat_specs), **about,
                "tool_format": "chat_template"}
    segments = []
    for step, (output, _) in zip(steps, outputs, strict=True):
        tool = step["tool"]
        segments.append(
            {"text": f"<think>{step['think']}</think><{tool}>{step['payload']}</{tool}>", "train": True}
        )
        segments.append({"text": RESULT_TEMPLATE.format(text=escape_tags(output, tool_names)), "train": False,
                         "tool_output": output})
    if not steps:
        segments.append({"text": f"<think>{NOTOOL_THINK}</think>", "train": True})
    segments.append({"text": f"<answer>\\boxed{{{answer}}}</answer>", "train": True})
    content = "".join(s["text"] for s in segments)
    return {
        "messages": messages + [{"role": "assistant", "content": content}],
        "segments": segments,
        **about,
        "tool_names": list(tool_names),  # the tags escaped inside tool output, as the rollout escapes them
    }


def _prompt_messages(row: dict, system_prompt: str | None) -> list[dict]:
    messages = [dict(m) for m in row["prompt"]]
    if system_prompt is not None:
        system = resolve_system_prompt(system_prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            m for m in messages if m["role"] != "system"
        ]
    return messages


def encode_trace(trace: dict, tokenizer, fmt=None) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of a trace: the prompt as `build_prompts` tokenizes it (mask 0), each
    segment tokenized on its own (mask 1 for model text, 0 for tool results), then EOS (mask 1). A
    chat-template trace needs the run's format object `fmt` (`appo.formats.build_format`) and is laid out as
    the rollout loop builds it (`appo.formats.conversation.encode_chat`)."""
    if trace.get("tool_format") == "chat_template":
        if getattr(fmt, "name", None) != "chat_template":
            raise ValueError("a chat-template trace is encoded with the run's chat-template format object (fmt=)")
        prompt_ids, response, mask = encode_chat(fmt, trace["messages"])
        return prompt_ids + response, [0] * len(prompt_ids) + mask
    prompt = tokenizer.apply_chat_template(trace["messages"][:-1], add_generation_prompt=True, tokenize=False)
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    mask = [0] * len(ids)
    for seg in trace["segments"]:
        if seg["train"]:
            part = tokenizer(seg["text"], add_special_tokens=False)["input_ids"]
        else:
            part = result_token_ids(tokenizer, seg["tool_output"], tool_names=trace.get("tool_names", ()))
        ids += part
        mask += [int(seg["train"])] * len(part)
    ids.append(tokenizer.eos_token_id)
    mask.append(1)
    return ids, mask


def call_traces(prompts: list, key: str, tool: str, tools, n: int, seed: int = 0,
                tool_format: str = "tags") -> list[dict]:
    """Cold-start traces for a user's own rows (`sft.trace_key`): row `key` holds a call of `tool` that
    solves it; at most `n` rows (a seeded choice) have it run through the real tool, and each trace calls
    it, reads the result and answers with the output, as the built-in arithmetic traces do. Rows whose
    call fails are left out (said in the count). `tool_format="chat_template"`: the trace is a conversation
    whose assistant turn calls the tool with the arguments its schema names (the column holds the tag
    format's payload: the text of a one-string-argument tool, else a JSON object)."""
    from appo.tools.base import ToolCall

    usable = [p for p in prompts if isinstance(p.extra.get(key), str) and p.extra[key].strip()]
    if not usable:
        raise ValueError(f"sft.trace_key={key!r}: no training row has a non-empty '{key}' column")
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    picked = [usable[i] for i in order[:n]]
    results = tools.run([ToolCall(tool, p.extra[key]) for p in picked])
    traces = []
    for p, result in zip(picked, results, strict=True):
        if not result.ok:
            continue
        about = {"data_source": p.data_source, "ground_truth": p.ground_truth, "index": p.index, "variant": "tool"}
        if tool_format == "chat_template":
            try:
                made = chat_call(tool_specs_of(tools), tool, p.extra[key])
            except ValueError:  # a payload the tool's schema does not read: no call to show
                continue
            turns = [{"role": "assistant", "content": "", "tool_calls": [made]},
                     {"role": "tool", "name": tool, "content": result.text},
                     {"role": "assistant", "content": f"<answer>\\boxed{{{result.text.strip()}}}</answer>"}]
            traces.append({"messages": [dict(m) for m in p.messages] + turns, **about, "tool_format": "chat_template"})
            continue
        segments = [{"text": f"<{tool}>{p.extra[key]}</{tool}>", "train": True},
                    {"text": RESULT_TEMPLATE.format(text=escape_tags(result.text, tools.names)), "train": False,
                     "tool_output": result.text},
                    {"text": f"<answer>\\boxed{{{result.text.strip()}}}</answer>", "train": True}]
        traces.append({"messages": [dict(m) for m in p.messages]
                       + [{"role": "assistant", "content": "".join(s["text"] for s in segments)}],
                       "segments": segments, **about, "tool_names": list(tools.names)})
    if not traces:
        raise ValueError(f"sft.trace_key={key!r}: every one of {len(picked)} calls failed in the {tool} tool "
                         f"(first: {results[0].text[:200]!r})")
    return traces
