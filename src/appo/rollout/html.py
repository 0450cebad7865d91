"""A static, self-contained HTML page of rollout trees: per prompt, its initial rollouts with their
split points (and scores), tool calls and results, and under each rollout the branches that continue
from it, with rewards."""

from __future__ import annotations

import html

from appo.rollout.trajectory import RolloutGroup, Trajectory

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h2{border-top:2px solid #ccc;padding-top:.6em}
.row{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin:.6em 0;background:#fafafa}
.branch{margin-left:2em;background:#f4f8ff}
.meta{font-size:.85em;color:#555;margin-bottom:.3em}
.text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.85em}
.tool{background:#fff3cd;color:#6b4e00}
.prefix{color:#999}
.split{background:#d62728;color:#fff;border-radius:3px;padding:0 3px;font-size:.75em;cursor:help}
.good{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}
"""


def render_html(groups: list[RolloutGroup], tokenizer, title: str = "appo rollouts") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Yellow: tool results (not sampled, loss-masked). Red markers: branch points after that token "
             "(hover for the branching score). Grey: a branch's prefix copied from its initial rollout.</p>"]
    for g, group in enumerate(groups):
        parts.append(_group(g, group, tokenizer))
    parts.append("</body></html>")
    return "".join(parts)


def _group(g: int, group: RolloutGroup, tokenizer) -> str:
    prompt = group.prompt
    question = _question(prompt, group, tokenizer)
    truth = getattr(prompt, "ground_truth", None)
    rewards = [t.reward for t in group.rows if t.reward is not None]
    mean = f" · mean reward {sum(rewards) / len(rewards):.3f}" if rewards else ""
    out = [f"<h2>Prompt {g}{mean}</h2><div class='meta'>ground truth: {html.escape(str(truth))}</div>"
           f"<details><summary>prompt</summary><div class='text'>{html.escape(question)}</div></details>"]
    for i, init in enumerate(group.inits):
        children = [b for b in group.branches if b.parent == i]
        out.append(_row(f"initial rollout {i}", init, tokenizer, {b.split_pos: b.branch_score for b in children}))
        out += [_row(f"branch at token {b.split_pos}{_score(b.branch_score)}", b, tokenizer, {}, css="branch")
                for b in children]
    out += [_row("fresh rollout (no branch point available)", b, tokenizer, {}, css="branch")
            for b in group.branches if b.parent is None]
    return "".join(out)


def _question(prompt, group: RolloutGroup, tokenizer) -> str:
    messages = getattr(prompt, "messages", None)
    if messages:
        return "\n\n".join(f"[{m['role']}] {m['content']}" for m in messages)
    first = group.rows[0] if group.rows else None
    return tokenizer.decode(first.prompt_ids, skip_special_tokens=False) if first else ""


def _row(label: str, t: Trajectory, tokenizer, splits: dict, css: str = "") -> str:
    reward = "" if t.reward is None else (
        f" · reward <span class='{'good' if t.reward > 0 else 'bad'}'>{t.reward:.3f}</span>")
    calls = ", ".join(f"{e['tool']}{'' if e['ok'] else ' (failed)'}" for e in t.tool_log) or "none"
    meta = (f"{html.escape(label)} · {len(t)} tokens · finish {t.finish_reason} · tool calls: "
            f"{html.escape(calls)}{reward}")
    return f"<div class='row {css}'><div class='meta'>{meta}</div><div class='text'>{_body(t, tokenizer, splits)}</div></div>"


def _body(t: Trajectory, tokenizer, splits: dict) -> str:
    """The response as segments: copied prefix, generated text, tool results, with split markers."""
    copied = t.split_pos + 1 if t.split_pos is not None and t.kind == "branch" else 0
    cuts = {0, len(t), copied} | {e["start"] for e in t.tool_log} | {e["end"] for e in t.tool_log}
    cuts |= {pos + 1 for pos in splits if pos is not None}
    bounds = sorted(c for c in cuts if 0 <= c <= len(t))
    tool_spans = [(e["start"], e["end"]) for e in t.tool_log]
    out = []
    for start, end in zip(bounds, bounds[1:]):
        text = html.escape(tokenizer.decode(t.token_ids[start:end], skip_special_tokens=False))
        if start < copied:
            cls = "prefix"
        elif any(a <= start < b for a, b in tool_spans):
            cls = "tool"
        else:
            cls = ""
        out.append(f"<span class='{cls}'>{text}</span>" if cls else text)
        if end - 1 in splits:
            out.append(f"<span class='split' title='branch point at token {end - 1}{_score(splits[end - 1])}'>"
                       "⑂</span>")
    return "".join(out)


def _score(score: float | None) -> str:
    return "" if score is None else f", score {score:.4f}"
