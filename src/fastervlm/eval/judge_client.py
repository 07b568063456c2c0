"""The judge endpoint: an OpenAI-compatible chat server asked about one item at a time through the openai SDK,
with bounded retries, a breaker for an endpoint that never answers, and the model name the server reports.

Three kinds of failed attempt are retried (with exponential backoff) until `max_attempts`:
- the server did not answer: connection refused or reset, timeout (nothing came back);
- it answered with an error status worth retrying (408, 409, 429, 5xx) or a 200 whose body is not an OpenAI chat
  completion (an HTML or text page from a proxy, a login wall, a web server's welcome page);
- it answered, but with no message (empty `choices`, a null or empty content);
- it answered, but the reply is not an exact {'pred': 'yes'|'no', 'score': 0..5}.
Other statuses (bad key, unknown model, bad request) stop at once. When the endpoint has answered nothing for
`dead_after` seconds and two requests in a row could not connect or timed out, it is called dead: judging stops
within about max(dead_after, 2 x timeout) instead of waiting out every item's attempts. A server that answers,
however slowly, is waited for. The API key is only handed to the SDK and is hidden in every message
(`SECRET_MIN_LENGTH`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastervlm.errors import FasterVLMError
from fastervlm.eval.metrics import parse_reply, strict_verdict
from fastervlm.eval.prompt import PROMPT_VERSION, judge_messages

DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo"
OPENAI_URL = "https://api.openai.com/v1"
"""The SDK's endpoint when neither --base-url nor OPENAI_BASE_URL is set."""
RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Plus every 5xx: the server may answer later. Other 4xx mean the request or the set-up is wrong."""
SECRET_MIN_LENGTH = 8
"""API keys at least this long are hidden (as ***) wherever they appear in a message, reply or error. A shorter key
is a placeholder for a local server that ignores keys (the docs say any value works there), not a secret: it is
never searched for, because replacing every "a" of a message for a key "a" would garble every message and show the
key by its gaps. It is still never written anywhere: fastervlm's messages never include request headers, so only a
server that echoes its Authorization header back could show it."""
BASE_URL_FIX = "check OPENAI_BASE_URL (or --base-url): it must be the /v1 address of an OpenAI-compatible server"


@dataclass
class JudgeSettings:
    """Which judge, how hard to try and how fast to go."""

    model: str = DEFAULT_JUDGE_MODEL
    base_url: str | None = None
    """None: OPENAI_BASE_URL, else the SDK's default (api.openai.com)."""
    temperature: float = 0.0
    max_attempts: int = 5
    concurrency: int = 8
    timeout: float = 60.0
    backoff: float = 1.0
    """Seconds before the second attempt; doubled for each further one (plus jitter), capped at max_backoff."""
    max_backoff: float = 30.0
    prompt_version: str = PROMPT_VERSION
    cache_dir: Path | None = None
    down_after: int = 3
    """Stop the whole run when this many items in a row (or all of them, when fewer) failed every attempt without
    a usable answer from the server (errors, timeouts, pages that are not OpenAI JSON, completions without a
    message)."""
    dead_after: float = 60.0
    """Stop when the endpoint has answered nothing for this many seconds (since the first request or its last
    answer) and two requests in a row could not connect or timed out."""

    def __post_init__(self) -> None:
        limits = {"concurrency (--concurrency)": self.concurrency, "max_attempts (--max-attempts)": self.max_attempts,
                  "down_after": self.down_after}
        for name, value in limits.items():
            if not isinstance(value, int) or value < 1:
                raise FasterVLMError(f"judge setting {name} must be a whole number of at least 1 (got {value!r}).")
        for name, seconds in {"timeout (--judge-timeout)": self.timeout, "dead_after (--dead-after)": self.dead_after}.items():
            if not seconds > 0:
                raise FasterVLMError(f"judge {name} must be above 0 seconds (got {seconds!r}).")

    def record(self, base_url: str | None) -> dict[str, Any]:
        """What judge.json keeps: no key, and no credentials embedded in the URL."""
        out = {k: v for k, v in asdict(self).items() if k not in ("cache_dir", "base_url")}
        out["judge_model"] = out.pop("model")
        out["base_url"] = public_url(base_url)
        return out


def public_url(url: str | None) -> str | None:
    """`url` without user, password, query or fragment (they may hold credentials)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, endpoint_host(url), parts.path, "", ""))


def endpoint_host(url: str | None) -> str:
    """host[:port] of an endpoint URL: what tells two servers apart in the judgment cache."""
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if parts.port else host


def api_key_from_env() -> str:
    """$OPENAI_API_KEY, or an error that names it (checked before long work that ends with judging)."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        raise FasterVLMError(
            "the judge needs an API key: set OPENAI_API_KEY (any non-empty value for a local server that ignores it)."
        )
    return key


class JudgeUnavailable(FasterVLMError):
    """The endpoint refuses every request (down, wrong URL, bad key, unknown model): stop the whole run."""


class NotOpenAIJSON(Exception):
    """A 200 response whose body is not an OpenAI chat completion (what a proxy's HTML login page gives)."""


@dataclass
class Outcome:
    """One item's judgment: every reply received (in attempt order), what the last one means, or why none counts."""

    reply: str | None = None
    replies: list[str | None] = field(default_factory=list)
    pred: str | None = None
    score: float | None = None
    error: str | None = None
    attempts: int = 0
    failure: str | None = None
    """Why the last attempt got no reply: "transport" (no answer, or an error status), "not_json" or "empty" (a
    completion without a message: empty `choices`, a null or empty content); None when it got one."""
    served_model: str | None = None
    """The model name in the server's response."""

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def transport_failure(self) -> bool:
        return self.failure == "transport"


class EndpointWatch:
    """Whether the endpoint is alive: any answer (even an error status) resets it; it trips when nothing has come
    back for `dead_after` seconds and at least two requests in a row failed without an answer."""

    def __init__(self, dead_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.dead_after = dead_after
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._silent_failures = 0

    def request(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = self._clock()

    def answered(self) -> None:
        with self._lock:
            self._since = self._clock()
            self._silent_failures = 0

    def no_answer(self) -> tuple[int, float] | None:
        """Count a request that got nothing back; (failures in a row, seconds of silence) when that trips it."""
        with self._lock:
            self._silent_failures += 1
            silence = self._clock() - (self._since if self._since is not None else self._clock())
            return (self._silent_failures, silence) if self._silent_failures >= 2 and silence >= self.dead_after else None


def _snippet(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def read_completion(response: Any) -> tuple[str | None, str | None]:
    """(message content, served model) of a chat completion; NotOpenAIJSON for anything else."""
    if isinstance(response, (str, bytes)):  # the SDK hands back the body as text when it is not JSON
        text = response.decode(errors="replace") if isinstance(response, bytes) else response
        raise NotOpenAIJSON(f"a text page: {_snippet(text)!r}")
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise NotOpenAIJSON("JSON without a 'choices' list")
    served = getattr(response, "model", None)
    served = served if isinstance(served, str) and served else None
    if not choices:
        return None, served
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if content is not None and not isinstance(content, str):
        raise NotOpenAIJSON(f"a message content that is not text ({type(content).__name__})")
    return content, served


class Judge:
    """An OpenAI-compatible chat endpoint that answers one item at a time (call it from many threads)."""

    def __init__(self, settings: JudgeSettings, api_key: str | None = None):
        import openai

        self.settings = settings
        self.api_key = api_key or api_key_from_env()
        self.base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._openai = openai
        self._client = openai.OpenAI(api_key=self.api_key, base_url=self.base_url, max_retries=0, timeout=settings.timeout)
        self.url = public_url(str(self._client.base_url).rstrip("/"))
        """The address the SDK calls (the default one when no base URL is set), without credentials."""
        self.host = endpoint_host(self.url)
        self.served_model: str | None = None
        """The model name in the server's latest response (None until one arrived)."""
        self._watch = EndpointWatch(settings.dead_after)
        self._lock = threading.Lock()
        self.calls = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    def scrub(self, text: str) -> str:
        """`text` with every whole occurrence of the API key replaced by ***; a key shorter than SECRET_MIN_LENGTH
        is never searched for (see there)."""
        return text.replace(self.api_key, "***") if len(self.api_key) >= SECRET_MIN_LENGTH else text

    def _delay(self, attempt: int, error: Exception | None) -> float:
        delay = self.settings.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
        response = getattr(error, "response", None)
        if response is not None:
            try:
                delay = max(delay, float(response.headers.get("retry-after", 0)))
            except ValueError:
                pass
        return min(delay, self.settings.max_backoff)

    def _call(self, messages: list[dict[str, str]]) -> tuple[str | None, str | None]:
        """One request: (reply text, served model). Raises the SDK's errors and NotOpenAIJSON."""
        with self._lock:
            self.calls += 1
        self._watch.request()
        try:
            response = self._client.chat.completions.create(
                model=self.settings.model, messages=messages, temperature=self.settings.temperature
            )
        except json.JSONDecodeError as err:  # declared JSON, but is not
            raise NotOpenAIJSON(f"a body that is not JSON ({err})") from None
        reply, served = read_completion(response)
        usage = getattr(response, "usage", None)
        with self._lock:
            if served:
                self.served_model = served
            if usage is not None:
                self.usage["prompt_tokens"] += getattr(usage, "prompt_tokens", 0) or 0
                self.usage["completion_tokens"] += getattr(usage, "completion_tokens", 0) or 0
        return reply, served

    def _is_retryable(self, err: Exception) -> bool:
        if isinstance(err, (self._openai.APIConnectionError, self._openai.APIResponseValidationError)):
            return True  # timeouts, refused connections, a garbled 200
        status = getattr(err, "status_code", None)
        return status is not None and (status in RETRYABLE_STATUS or status >= 500)

    def judge(self, question: str, answer: str, pred: str, stop: threading.Event | None = None) -> Outcome:
        """Ask until a reply parses exactly or `max_attempts` are spent; every failure counts as an attempt. A
        non-retryable API error (bad key, unknown model, bad request), or an endpoint that has answered nothing
        for too long, raises JudgeUnavailable. `stop` ends the retries early, the wait between attempts included."""
        messages = judge_messages(question, answer, pred, self.settings.prompt_version)
        stop = stop or threading.Event()
        outcome = Outcome()
        for attempt in range(1, self.settings.max_attempts + 1):
            if stop.is_set():
                break
            outcome.attempts = attempt
            error = self._attempt(messages, outcome)
            if outcome.valid:
                return outcome
            if attempt < self.settings.max_attempts and stop.wait(self._delay(attempt, error)):
                break
        return outcome

    def _attempt(self, messages: list[dict[str, str]], outcome: Outcome) -> Exception | None:
        """One try, recorded in `outcome`; the SDK error that failed it (for Retry-After), if any."""
        try:
            reply, served = self._call(messages)
        except self._openai.APIConnectionError as err:  # refused, reset, timed out: nothing came back
            outcome.failure, outcome.error = "transport", self.scrub(f"{type(err).__name__}: {err}")
            tripped = self._watch.no_answer()
            if tripped is not None:
                raise JudgeUnavailable(self._dead_message(*tripped, outcome.error)) from None
            return err
        except self._openai.APIError as err:
            self._watch.answered()
            if not self._is_retryable(err):
                raise JudgeUnavailable(
                    f"the judge endpoint {self.url} refused the request for model {self.settings.model!r}: "
                    f"{self.scrub(str(err))}. Check --judge-model, OPENAI_BASE_URL and OPENAI_API_KEY."
                ) from None
            outcome.failure, outcome.error = "transport", self.scrub(f"{type(err).__name__}: {err}")
            return err
        except NotOpenAIJSON as err:
            self._watch.answered()
            outcome.failure = "not_json"
            outcome.error = f"the endpoint at {self.url} did not return OpenAI-style JSON ({self.scrub(str(err))}): {BASE_URL_FIX}"
            return None
        self._watch.answered()
        outcome.failure, outcome.served_model = None, served
        outcome.reply = self.scrub(reply) if reply is not None else None
        outcome.replies.append(outcome.reply)
        if reply is None or not reply.strip():  # empty `choices`, a null or empty content: no answer at all
            outcome.failure = "empty"
            outcome.error = (f"the endpoint at {self.url} answered with no message (empty choices, or a null or empty "
                             "content)")
            return None
        verdict, problem = strict_verdict(parse_reply(reply))
        if verdict is None:
            outcome.error = f"unusable reply: {problem}"
        else:
            outcome.pred, outcome.score, outcome.error = verdict.pred, verdict.score, None
        return None

    def _dead_message(self, failures: int, silence: float, last: str) -> str:
        return (
            f"the judge endpoint {self.url} has answered nothing for {silence:.0f} s ({failures} requests in a row "
            f"could not connect or timed out; last: {last}): check that the server is running and that OPENAI_BASE_URL "
            "(or --base-url) points at it. A server that answers, however slowly, is waited for; --dead-after sets "
            "this limit."
        )
