"""A judge that a running server serves: a score_model grader with `base_url` sends its rendered messages to
OpenAI's chat completions API there (a `tunelab serve`, or any server speaking that API) and reads the reply.

Why a judge over HTTP at all: the judge may be bigger than the policy, or already in service for other users, and
loading a second copy of it into every training process costs memory the training needs. The server batches the
concurrent requests this sends (serve/engine.py), so one call's answers are judged together, as in-process.

Why the standard library (urllib) and not the openai client: the client is a test dependency only, and two plain
JSON endpoints (`GET /models`, `POST /chat/completions`) need nothing more.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

TIMEOUT_S = 300.0  # one judge reply; a CPU server under training load can be slow, a dead one is refused at once
PARALLEL = 16  # requests in flight at once: enough for the server to batch one call's answers


@dataclass(frozen=True)
class ServedJudge:
    base_url: str  # up to and including /v1
    model: str  # the id the server lists under GET /models
    key: str | None  # the API key, where the server needs one
    where: str  # names the reward in every error

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        url = self.base_url.rstrip("/") + path
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method),
                                        timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise TunelabError(f"{self.where}: {method} {url} answered {error.code}: {error_message(error)}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise TunelabError(f"{self.where}: {method} {url} failed: {reason}") from None

    def check(self) -> None:
        """The server answers and serves `model`: before training, so a typo is one line, not a failed step."""
        listed = [entry.get("id") for entry in (self.request("GET", "/models").get("data") or [])]
        if self.model not in listed:
            raise TunelabError(f"{self.where}: {self.base_url} serves no model '{self.model}' "
                               f"(it serves: {', '.join(map(str, listed)) or 'none'})")

    def reply(self, messages: list[dict[str, str]], sampling: dict[str, Any]) -> str:
        body = {"model": self.model, "messages": messages, **sampling}
        choices = self.request("POST", "/chat/completions", body).get("choices") or []
        if not choices:
            raise TunelabError(f"{self.where}: {self.base_url} answered with no choices")
        return str((choices[0].get("message") or {}).get("content") or "")

    def replies(self, conversations: list[list[dict[str, str]]], sampling: dict[str, Any]) -> list[str]:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, max(1, len(conversations)))) as pool:
            return list(pool.map(lambda messages: self.reply(messages, sampling), conversations))


def served_judge(base_url: str, model: str, api_key_env: str | None, where: str) -> ServedJudge:
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise TunelabError(f"{where}: api_key_env names {api_key_env}, which is not set")
    return ServedJudge(base_url, model, key, where)


def error_message(error: urllib.error.HTTPError) -> str:
    """OpenAI's error shape's message where the server sent one, else the start of the body."""
    body = b""
    try:
        body = error.read()
        return str(json.loads(body)["error"]["message"])
    except Exception:  # not OpenAI's shape: the body as text says more than nothing
        return body.decode(errors="replace")[:200] or str(error.reason)
