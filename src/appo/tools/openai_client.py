"""A minimal client for one OpenAI-compatible `/v1/chat/completions` request (the LLM judge, the browser's
page summariser).

The endpoint URL and key come from environment variables named by the caller; neither ever appears in an
error message. Redirects are not followed: an API endpoint has no business redirecting, and following one
would carry the `Authorization` header to whatever host the redirect names.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from appo.tools.web_fetch import no_redirect_opener


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
        req = urllib.request.Request(self._url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with no_redirect_opener().open(req, timeout=timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8", errors="replace"))
            content = payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as e:  # the body may echo headers; keep only the status
            raise ChatError(f"HTTP {e.code}") from None
        except TimeoutError:
            raise ChatError(f"no answer within {timeout:g}s") from None
        except (urllib.error.URLError, OSError) as e:
            raise ChatError(f"connection failed: {type(e).__name__}") from None
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ChatError(f"malformed response: {type(e).__name__}") from None
        if not isinstance(content, str):
            raise ChatError("malformed response: reply has no text content")
        return content
