"""A static, self-contained HTML page of rollout trees: per prompt, its initial rollouts with their
split points (and scores), tool calls and results, and under each rollout the branches that continue
from it, with rewards.

In the chat template's own format (`tools.format=chat_template`) the calls are the model's `<tool_call>` text in
its turn, several per turn, and the yellow span after the turn is the template's rendering of their tool messages
and the next generation prompt; each row lists its calls with their arguments, and calls that could not run
(malformed JSON, an unknown tool, bad arguments) are marked.

Every response token is its own span carrying its entropy and, when known (a training step's dump), the
advantage it was trained with; a switch at the top shades the text by either. Prompts and rollout trees
are collapsible (<details>) and linked from a navigation bar. `render_dump` draws the same page from a
trainer's `rollouts/step_N.jsonl`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from types import SimpleNamespace

from appo.errors import UserError
from appo.json_input import parse_json
from appo.rollout.trajectory import RolloutGroup, Trajectory

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.4em 0;z-index:1;font-size:.9em}
nav a{margin-right:.5em}
details.group{border-top:2px solid #ccc;margin-top:1em;padding-top:.4em}
details.group>summary{font-size:1.25em;font-weight:bold;cursor:pointer}
details.tree>summary{cursor:pointer;font-size:.9em;color:#333;margin:.4em 0}
.links{font-size:.8em;margin-left:1em;font-weight:normal}
.row{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin:.6em 0;background:#fafafa}
.branch{margin-left:2em;background:#f4f8ff}
.meta{font-size:.85em;color:#555;margin-bottom:.3em}
.text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em;line-height:1.5}
.tool{background:#fff3cd;color:#6b4e00}
.prefix{color:#999}
.prefix.tool{background:#fbf4dc;color:#a38f55}
.split{background:#d62728;color:#fff;border-radius:3px;padding:0 3px;font-size:.75em;cursor:help}
.good{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}
body.shade-entropy .k:not(.tool){background:rgba(255,127,14,var(--e,0))}
body.shade-advantage .k:not(.tool){background:rgba(var(--ac,0,0,0),var(--a,0))}
.legend{font-size:.85em;color:#444}
details.calls{font-size:.8em;color:#444;margin-bottom:.3em}details.calls code{white-space:pre-wrap}
"""

SCRIPT = """
function shade(mode){document.body.classList.remove('shade-entropy','shade-advantage');
if(mode!=='none')document.body.classList.add('shade-'+mode);}
"""

_POSITIVE, _NEGATIVE = "26,127,55", "214,39,40"


def render_html(groups: list[RolloutGroup], tokenizer, title: str = "appo rollouts") -> str:
    scale = _Scale(groups)
    nav = " ".join(f"<a href='#p{g}'>{g}</a>" for g in range(len(groups)))
    has_adv = scale.advantage > 0
    no_adv = "" if has_adv else ("; all 0 in this step" if scale.recorded else "; none recorded: rollouts without training")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1 id='top'>{html.escape(title)}</h1>",
             "<p class='legend'>Yellow: tool results (not sampled, loss-masked), also inside a branch's copied "
             "prefix; in the chat-template format, the template's rendering of a turn's tool messages and the next "
             "generation prompt. Grey text: a branch's prefix copied from its initial rollout. Red [split s] markers: the "
             "branch points after that token, with the branching score s. Hover a token for its entropy, "
             "log-prob and advantage.</p>",
             "<nav>Shade tokens by: "
             "<label><input type='radio' name='shade' value='none' checked onchange='shade(this.value)'> nothing"
             "</label> <label><input type='radio' name='shade' value='entropy' onchange='shade(this.value)'> "
             f"entropy (orange, full at {scale.entropy:.2f} nats)</label> "
             "<label><input type='radio' name='shade' value='advantage' onchange='shade(this.value)'"
             f"{'' if has_adv else ' disabled'}> advantage (green +, red -, full at |A| = {scale.advantage:.2f}"
             f"{no_adv})</label>"
             f" &nbsp;|&nbsp; Prompts: {nav}</nav>"]
    for g, group in enumerate(groups):
        parts.append(_group(g, len(groups), group, tokenizer, scale))
    parts.append("</body></html>")
    return "".join(parts)


def render_dump(path: str | Path, tokenizer, title: str | None = None) -> str:
    """The page for a trainer dump (`rollouts/step_N.jsonl`: one record per row, with its group, kind,
    parent, split position, reward and per-token advantages)."""
    path = Path(path)
    groups: dict[int, RolloutGroup] = {}
    fields = set(Trajectory.__dataclass_fields__) - {"top_logprobs", "meta"}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        record = _checked_record(parse_json(line, f"{path}: line {n}"), f"{path}: line {n}")
        traj = Trajectory(**{k: v for k, v in record.items() if k in fields},
                          meta=dict(record.get("meta") or {}, advantages=record.get("advantages")))
        group = groups.setdefault(record["group"], RolloutGroup(prompt=SimpleNamespace(
            messages=None, ground_truth=record.get("ground_truth"))))
        (group.branches if traj.kind == "branch" else group.inits).append(traj)
    return render_html([groups[g] for g in sorted(groups)], tokenizer, title or f"appo rollouts · {path.stem}")


_INT, _NUMBER, _NONE = (int,), (int, float), (type(None),)
# The fields of a dump record that the page computes with, and their types (strings are escaped wherever shown).
_RECORD_TYPES = {"prompt_ids": ("list", _INT), "token_ids": ("list", _INT), "generated": ("list", _INT),
                 "logprobs": ("list", _NUMBER), "entropies": ("list", _NUMBER), "tool_log": ("list", (dict,)),
                 "advantages": ("list or null", _NUMBER), "group": ("", _INT), "parent": ("", _INT + _NONE),
                 "split_pos": ("", _INT + _NONE), "branch_score": ("", _NUMBER + _NONE),
                 "reward": ("", _NUMBER + _NONE), "kind": ("", (str,)), "finish_reason": ("", (str, type(None)))}


def _checked_record(record, where: str) -> dict:
    """A dump record whose fields have the types the page needs; else a UserError naming the field."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object (one rollout row), found a {type(record).__name__}")
    for key, (shape, types) in _RECORD_TYPES.items():
        value = record.get(key)
        if shape == "list or null" and value is None:
            continue
        items = value if shape and isinstance(value, list) else [value] if not shape else None
        if items is None or not all(isinstance(v, types) for v in items):
            raise UserError(f"{where}: field '{key}' is {json.dumps(value)[:60]}, not {shape + ' of ' if shape else ''}"
                            f"{'/'.join(t.__name__ for t in types)}")
    for entry in record["tool_log"]:
        if not isinstance(entry.get("start"), int) or not isinstance(entry.get("end"), int) or "tool" not in entry:
            raise UserError(f"{where}: field 'tool_log' has an entry without tool, start and end: "
                            f"{json.dumps(entry)[:60]}")
    if record.get("tool_format", "tags") not in ("tags", "chat_template"):
        raise UserError(f"{where}: field 'tool_format' is {json.dumps(record['tool_format'])[:60]}, not tags or "
                        "chat_template")
    return record


class _Scale:
    """Page-wide shading scales: the 95th percentile of entropies and of |advantages| gets full colour."""

    def __init__(self, groups: list[RolloutGroup]):
        entropies = sorted(e for g in groups for t in g.rows for e, s in zip(t.entropies, t.generated) if s)
        self.recorded = any(t.meta.get("advantages") is not None for g in groups for t in g.rows)
        advs = sorted(abs(a) for g in groups for t in g.rows for a in (t.meta.get("advantages") or []) if a)
        self.entropy = max(_percentile(entropies), 1e-6)
        self.advantage = _percentile(advs)

    def style(self, t: Trajectory, i: int) -> str:
        parts = [f"--e:{min(1.0, t.entropies[i] / self.entropy) * 0.7:.2f}"]  # 0.7: text stays legible
        advs = t.meta.get("advantages")
        if advs and i < len(advs) and self.advantage > 0:
            a = advs[i]
            parts.append(f"--a:{min(1.0, abs(a) / self.advantage) * 0.8:.2f};--ac:{_POSITIVE if a > 0 else _NEGATIVE}")
        return ";".join(parts)

    def title(self, t: Trajectory, i: int) -> str:
        if not t.generated[i]:
            tools = [e["tool"] or "unreadable call" for e in t.tool_log if e["start"] <= i < e["end"]]
            if getattr(t, "tool_format", "tags") == "chat_template" and tools:
                return f"results of {', '.join(tools)} (not sampled)"
            return "tool result (not sampled)"
        advs = t.meta.get("advantages")
        adv = f" · advantage {advs[i]:+.3f}" if advs and i < len(advs) else ""
        return f"token {i} · entropy {t.entropies[i]:.3f} · log-prob {t.logprobs[i]:.3f}{adv}"


def _percentile(values: list[float], q: float = 0.95) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _group(g: int, count: int, group: RolloutGroup, tokenizer, scale: _Scale) -> str:
    prompt = group.prompt
    question = _question(prompt, group, tokenizer)
    truth = getattr(prompt, "ground_truth", None)
    rewards = [t.reward for t in group.rows if t.reward is not None]
    mean = f" · mean reward {sum(rewards) / len(rewards):.3f}" if rewards else ""
    links = " ".join(link for link in (f"<a href='#p{g - 1}'>prev</a>" if g > 0 else "",
                                       f"<a href='#p{g + 1}'>next</a>" if g + 1 < count else "",
                                       "<a href='#top'>top</a>") if link)
    out = [f"<details class='group' id='p{g}' open><summary>Prompt {g}{mean} · {len(group.inits)} rollouts, "
           f"{len(group.branches)} branches<span class='links'>{links}</span></summary>"
           f"<div class='meta'>ground truth: {html.escape('–' if truth is None else str(truth))}</div>"
           f"<details><summary>prompt</summary><div class='text'>{html.escape(question)}</div></details>"]
    for i, init in enumerate(group.inits):
        children = [b for b in group.branches if b.parent == i]
        out.append(f"<details class='tree' open><summary>initial rollout {i}{_reward(init)} · "
                   f"{len(children)} branches</summary>")
        out.append(_row(f"initial rollout {i}", init, tokenizer, scale, {b.split_pos: b.branch_score for b in children}))
        out += [_row(f"branch at token {b.split_pos}{_score(b.branch_score)}", b, tokenizer, scale, {}, css="branch")
                for b in children]
        out.append("</details>")
    out += [_row("fresh rollout (no branch point available)", b, tokenizer, scale, {}, css="branch")
            for b in group.branches if b.parent is None]
    out.append("</details>")
    return "".join(out)


def _question(prompt, group: RolloutGroup, tokenizer) -> str:
    messages = getattr(prompt, "messages", None)
    if messages:
        return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
    first = group.rows[0] if group.rows else None
    return tokenizer.decode(first.prompt_ids, skip_special_tokens=False) if first else ""


def _reward(t: Trajectory) -> str:
    return "" if t.reward is None else (
        f" · reward <span class='{'good' if t.reward > 0 else 'bad'}'>{t.reward:.3f}</span>")


# Why a call could not run (a tool_log entry's `kind`), as the page says it.
_BAD_CALLS = {"json": "malformed JSON", "unknown_tool": "unknown tool", "arguments": "bad arguments",
              "empty": "empty call"}


def _call_label(entry: dict) -> str:
    why = _BAD_CALLS.get(entry.get("kind") or "")
    state = f" ({why})" if why else "" if entry.get("ok") else " (failed)"
    return f"{entry['tool'] or 'unreadable call'}{state}"


def _calls(t: Trajectory) -> str:
    """The row's calls in order, each with what the tool got (or the call as written, when it could not run)."""
    if not t.tool_log:
        return ""
    items = "".join(f"<li>{html.escape(_call_label(e))}: <code>{html.escape(str(e.get('payload', '')))}</code></li>"
                    for e in t.tool_log)
    return f"<details class='calls'><summary>calls ({len(t.tool_log)})</summary><ol>{items}</ol></details>"


def _row(label: str, t: Trajectory, tokenizer, scale: _Scale, splits: dict, css: str = "") -> str:
    calls = ", ".join(_call_label(e) for e in t.tool_log) or "none"
    fmt = " · format chat_template" if getattr(t, "tool_format", "tags") == "chat_template" else ""
    meta = (f"{html.escape(label)} · {len(t)} tokens · finish {html.escape(str(t.finish_reason))}{fmt} · tool "
            f"calls: {html.escape(calls)}{_reward(t)}")
    return (f"<div class='row {css}'><div class='meta'>{meta}</div>{_calls(t)}"
            f"<div class='text'>{_body(t, tokenizer, scale, splits)}</div></div>")


def _pieces(token_ids: list[int], tokenizer) -> list[tuple[int, int, str]]:
    """(start, end, text) per token; a token that decodes to part of a character (byte-level BPE) is
    joined with the next ones until the text is whole."""
    out, start = [], 0
    while start < len(token_ids):
        end = start + 1
        text = tokenizer.decode(token_ids[start:end], skip_special_tokens=False)
        while "\ufffd" in text and end < len(token_ids) and end - start < 4:
            end += 1
            text = tokenizer.decode(token_ids[start:end], skip_special_tokens=False)
        out.append((start, end, text))
        start = end
    return out


def _body(t: Trajectory, tokenizer, scale: _Scale, splits: dict) -> str:
    """The response token by token: copied prefix (grey), tool results (yellow, in the prefix too),
    shading variables, and a [split score] marker after each branch point."""
    copied = t.split_pos + 1 if t.split_pos is not None and t.kind == "branch" else 0
    tool_spans = [(e["start"], e["end"]) for e in t.tool_log]
    out = []
    for start, end, text in _pieces(t.token_ids, tokenizer):
        classes = ["k"]
        if start < copied:
            classes.append("prefix")
        if any(a <= start < b for a, b in tool_spans):
            classes.append("tool")
        out.append(f"<span class='{' '.join(classes)}' style='{scale.style(t, start)}' "
                   f"title='{html.escape(scale.title(t, start))}'>{html.escape(text)}</span>")
        for pos in range(start, end):
            if pos in splits:
                score = splits[pos]
                out.append(f"<span class='split' title='branch point after token {pos}{_score(score)}'>"
                           f"[split{'' if score is None else f' {score:.3f}'}]</span>")
    return "".join(out)


def _score(score: float | None) -> str:
    return "" if score is None else f", score {score:.4f}"
