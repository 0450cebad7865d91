"""Per-benchmark summary of finished samples: pass@1, unbiased pass@k, maj@k, rule metrics, judge
counts, tool-call statistics and response lengths.

`correct` on each sample record is the binary outcome every accuracy number uses: the judge decision when
the judge ran (rule equivalence OR a positive verdict), else rule equivalence (math equivalence for math
sets, exact match for QA, the task's reward for built-in tasks).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from appo.core.metrics import maj_at_k, pass_at_k
from appo.eval.scoring import answer_key


def k_values(k: int) -> list[int]:
    """1, 2, 4, ... up to k, plus k itself: the pass@k curve points."""
    ks, v = [], 1
    while v < k:
        ks.append(v)
        v *= 2
    return ks + [k]


def _by_question(records: list[dict]) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["index"]].append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r["sample"])
    return groups


def _maj(samples: list[dict], k: int) -> float:
    """maj@k of one question: is the most frequent extracted answer among its first k samples correct?"""
    first = samples[:k]
    correct_of: dict[str, bool] = {}
    for r in first:  # equal answers get one verdict: that of the first sample holding it
        correct_of.setdefault(answer_key(r["pred"]), bool(r["correct"]))
    return maj_at_k([r["pred"] for r in first], k, lambda a: correct_of[answer_key(a)], key=answer_key)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def summarize(records: list[dict], k: int) -> dict:
    """Summary of one benchmark's records (the k used for pass@k/maj@k is the requested samples per item)."""
    if not records:
        return {"questions": 0, "samples": 0}
    groups = _by_question(records)
    out: dict = {"questions": len(groups), "samples": len(records), "k": k}
    out["pass@1"] = _mean(_mean(float(r["correct"]) for r in rs) for rs in groups.values())
    for kk in k_values(k)[1:]:
        eligible = [rs for rs in groups.values() if len(rs) >= kk]
        out[f"pass@{kk}"] = _mean(pass_at_k(len(rs), sum(r["correct"] for r in rs), kk) for rs in eligible)
    if k > 1:
        out[f"maj@{k}"] = _mean(_maj(rs, k) for rs in groups.values() if len(rs) >= k)
    for name in sorted({m for r in records for m in r["scores"]}):
        out[name] = _mean(r["scores"][name] for r in records if name in r["scores"])
    out.update(_judge_stats(records))
    out.update(_tool_stats(records))
    out.update(_length_stats(records))
    return out


def _judge_stats(records: list[dict]) -> dict:
    judged = [r["judge"] for r in records if r.get("judge")]
    if not judged:
        return {}
    counts = Counter(j["status"] for j in judged)
    return {"llm_equal": _mean(float(r["correct"]) for r in records if r.get("judge")),
            "judge_correct": counts["correct"], "judge_incorrect": counts["incorrect"],
            "judge_unparseable": counts["unparseable"], "judge_errors": counts["error"]}


# Calls the loop could not run as written (tools.format=chat_template: malformed JSON, an unknown tool, arguments
# that do not fit the schema); the model got an error result instead.
BAD_CALL_KINDS = ("json", "unknown_tool", "arguments")


def _tool_stats(records: list[dict]) -> dict:
    by_tool: Counter = Counter()
    errors: Counter = Counter()
    bad: Counter = Counter()
    phase_seconds: dict[str, list[float]] = {}
    for r in records:
        for call in r["tool_log"]:
            if call.get("kind") in BAD_CALL_KINDS:
                bad[call["kind"]] += 1
            if not call["tool"]:  # a call whose tool could not be read: counted as a bad call only
                continue
            by_tool[call["tool"]] += 1
            errors[call["tool"]] += not call["ok"]
            for phase, seconds in call.get("phases", {}).items():  # the browser's search/fetch/summarise
                phase_seconds.setdefault(f"{call['tool']}_{phase}_seconds", []).append(seconds)
    n = len(records)
    calls = sum(len(r["tool_log"]) for r in records)
    failed = sum(not call["ok"] for r in records for call in r["tool_log"])
    out = {"tool_calls_per_sample": calls / n,
           "tool_use_rate": _mean(float(bool(r["tool_log"])) for r in records),
           "tool_error_rate": failed / calls if calls else 0.0,
           "bad_calls_per_sample": sum(bad.values()) / n}
    out.update({f"bad_calls/{kind}": bad[kind] for kind in BAD_CALL_KINDS if bad[kind]})
    for tool in sorted(by_tool):
        out[f"{tool}_calls_per_sample"] = by_tool[tool] / n
        out[f"{tool}_errors"] = errors[tool]
    out.update({key: _mean(values) for key, values in sorted(phase_seconds.items())})  # mean per timed call
    return out


def _length_stats(records: list[dict]) -> dict:
    gen = [r["generated_tokens"] for r in records]
    finish = Counter(r["finish_reason"] for r in records)
    return {"response_tokens_mean": _mean(r["response_tokens"] for r in records),
            "generated_tokens_mean": _mean(gen), "generated_tokens_median": float(statistics.median(gen)),
            "generated_tokens_max": max(gen), "truncated_rate": finish.get("length", 0) / len(records)}
