"""A minimal client for one OpenAI-compatible `/v1/chat/completions` request (the LLM judge, the browser's
page summariser).

The endpoint URL and key come from environment variables named by the caller; neither ever appears in an
error message. Redirects are not followed: an API endpoint has no business redirecting, and following one
would carry the `Authorization` header to whatever host the redirect names. `timeout` bounds the whole
request, connect to last byte (web_fetch's watchdog), so a server trickling its answer cannot stretch it.
"""

from __future__ import annotations

import json
import os

from appo.tools.web_fetch import FetchError, http_post

MAX_REPLY_BYTES = 16 << 20


class ChatError(Exception):
    """One failed request. The message says why in a few words (`HTTP 503`, `connection failed: ...`,
    `malformed response: ...`) and never contains the URL or the key."""


def chat_url(base: str) -> str:
    """`http://host:port`, `.../v1` or the full `.../v1/chat/completions` all name the same endpoint."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + "/chat/completions" if base.endswith("/v1") else base + "/v1/chat/completions"


def endpoint_from_env(url_env: str, key_env: str) -> tuple[str, str]:
    """(base URL, key) from the environment; either is "" when its variable is unset."""
    return os.environ.get(url_env, "").strip(), os.environ.get(key_env, "").strip()


class ChatClient:
    def __init__(self, base_url: str, key: str, model: str):
        self._url = chat_url(base_url)
        self._key = key
        self.model = model

    def complete(self, prompt: str, *, temperature: float, max_tokens: int, timeout: float,
                 top_p: float | None = None) -> str:
        """The assistant text of a one-message chat; raises ChatError on any failure."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": temperature, "max_tokens": max_tokens}
        if top_p is not None:
            body["top_p"] = top_p
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            resp = http_post(self._url, json.dumps(body).encode(), timeout=timeout, max_bytes=MAX_REPLY_BYTES,
                             headers=headers)
        except FetchError as e:  # its message names no URL
            raise ChatError(str(e).replace("no complete answer", "no answer")) from None
        if not 200 <= resp.status < 300:  # the body may echo headers; keep only the status
            raise ChatError(f"HTTP {resp.status}")
        if resp.truncated:
            raise ChatError(f"malformed response: larger than {MAX_REPLY_BYTES} bytes")
        try:
            payload = json.loads(resp.body.decode("utf-8", errors="replace"))
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as e:
            raise ChatError(f"malformed response: {type(e).__name__}") from None
        if not isinstance(content, str):
            raise ChatError("malformed response: reply has no text content")
        return content
