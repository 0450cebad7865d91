from __future__ import annotations

import logging

import pytest

from appo.config import JudgeConfig
from appo.eval.judge import JudgeClient, JudgeError, Verdict, build_judge_prompt, decide, parse_verdict

from .judge_server import JudgeServer


@pytest.mark.parametrize("reply,status", [
    ("Correct", "correct"),
    ("correct.", "correct"),
    ("Incorrect", "incorrect"),
    ("The answer is wrong, so: Correct? No.", "incorrect"),
    ("This is not correct", "incorrect"),
    ("<think>is it correct? maybe incorrect</think>Correct", "correct"),
    ("preamble incorrect <judgment>Correct</judgment>", "correct"),
    ("I cannot tell.", "unparseable"),
    ("", "unparseable"),
])
def test_parse_verdict_follows_reference_rule(reply, status):
    assert parse_verdict(reply) == status


def test_decision_rule_is_rule_equal_or_positive_verdict():
    assert decide(True, None)
    assert decide(True, Verdict("error", "", 3))
    assert decide(False, Verdict("correct", "Correct", 1))
    assert not decide(False, Verdict("unparseable", "?", 1))
    assert not decide(False, Verdict("error", "", 3))
    assert not decide(False, None)


def test_prompt_shows_alias_list_and_extracted_answer():
    text = build_judge_prompt("Where?", ["NYC", "New York"], "Paris")
    assert "Golden answer: ['NYC', 'New York']" in text
    assert "Predicted answer: Paris\n" in text
    assert "Question: Where?" in text


def _cfg(monkeypatch, url: str, key: str | None = "sk-secret-123", **kw) -> JudgeConfig:
    monkeypatch.setenv("APPO_JUDGE_URL", url)
    if key is None:
        monkeypatch.delenv("APPO_JUDGE_API_KEY", raising=False)
    else:
        monkeypatch.setenv("APPO_JUDGE_API_KEY", key)
    return JudgeConfig(enabled=True, model="judge-x", timeout=5.0, **kw)


def test_judge_sends_openai_request_with_key_from_env(monkeypatch):
    with JudgeServer(default="Correct") as srv:
        client = JudgeClient(_cfg(monkeypatch, srv.url, temperature=0.0, max_tokens=7), backoff=0)
        v = client.judge("Q?", "42", "42.0")
    assert v.status == "correct" and v.attempts == 1
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["model"] == "judge-x" and req["temperature"] == 0.0 and req["max_tokens"] == 7
    assert "Predicted answer: 42.0" in req["messages"][0]["content"]
    assert srv.headers[0]["Authorization"] == "Bearer sk-secret-123"


def test_judge_without_key_sends_no_auth_header(monkeypatch):
    with JudgeServer(default="Incorrect") as srv:
        v = JudgeClient(_cfg(monkeypatch, srv.url + "/chat/completions", key=None), backoff=0).judge("Q", "a", "b")
    assert v.status == "incorrect"
    assert "Authorization" not in srv.headers[0]


def test_judge_retries_500_and_malformed_then_succeeds(monkeypatch):
    with JudgeServer(script=[500, None, "!garbage", "Correct"]) as srv:
        v = JudgeClient(_cfg(monkeypatch, srv.url, retries=4), backoff=0).judge("Q", "a", "b")
    assert v.status == "correct" and v.attempts == 4
    assert len(srv.requests) == 4


def test_judge_gives_up_after_retries_without_leaking_secrets(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with JudgeServer(default=503) as srv:
        v = JudgeClient(_cfg(monkeypatch, srv.url, retries=2), backoff=0).judge("Q", "a", "b")
    assert v.status == "error" and v.attempts == 2 and v.error == "HTTP 503"
    assert len(srv.requests) == 2
    assert "sk-secret-123" not in caplog.text + repr(v.as_dict())
    assert srv.url not in repr(v.as_dict())


def test_judge_connection_refused_is_an_error_not_a_crash(monkeypatch):
    with JudgeServer() as srv:
        url = srv.url
    v = JudgeClient(_cfg(monkeypatch, url, retries=2), backoff=0).judge("Q", "a", "b")
    assert v.status == "error" and v.error.startswith("connection failed")


def test_judge_many_keeps_order(monkeypatch):
    preds = [f"p{i}" for i in range(12)]
    replies = {p: ("Correct" if i % 3 == 0 else "Incorrect") for i, p in enumerate(preds)}
    with JudgeServer(by_pred=replies) as srv:
        client = JudgeClient(_cfg(monkeypatch, srv.url, max_workers=4), backoff=0)
        verdicts = client.judge_many([("Q", "g", p) for p in preds])
    assert [v.status for v in verdicts] == ["correct" if i % 3 == 0 else "incorrect" for i in range(12)]


def test_missing_url_env_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_URL", raising=False)
    with pytest.raises(JudgeError, match="MY_JUDGE_URL"):
        JudgeClient(JudgeConfig(enabled=True, url_env="MY_JUDGE_URL"))
