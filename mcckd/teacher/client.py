"""Clients for OpenAI-compatible servers (vLLM, SGLang, TGI and others): the chat-completions
API (`ChatCompletionsClient`, a user message) and the completions API (`CompletionsClient`, a
text or token-id prompt), both retrying what a retry can fix.

What a failure means decides what happens to it:

- connection errors, 429 and 5xx may pass if we wait: retried with exponential backoff and
  jitter, at least as long as a Retry-After header says (capped by `max_retry_after`); when
  the retries run out, `ServerError` (the server is down: the run stops);
- 400, 413 and 422 reject this one request (a prompt too long, a parameter the server refuses
  for it): `QuestionError` at once, the run goes on with the other questions;
- a reply that is not a completion (not JSON, no `choices`, an empty `choices`, a choice
  without its text) is retried like a 5xx; when the retries run out, `QuestionError`;
- any other 4xx (401, 403, 404: a wrong key, model or URL) holds for every request:
  InputError with the server's message, the run stops.

The API key is only ever sent in the Authorization header: never logged or written.
"""
import email.utils
import http.client
import itertools
import json
import random
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime

from mcckd.errors import InputError

# HTTP statuses that reject one request, not the run (vLLM answers 400 to a prompt longer than
# the model's context, for example).
QUESTION_STATUSES = (400, 413, 422)
DEFAULT_MAX_RETRY_AFTER = 300.0


class ServerError(RuntimeError):
    """The server kept failing (connection, 429, 5xx) after every retry."""


class QuestionError(Exception):
    """One request failed for good (a 400, or malformed replies after every retry); the
    message is the reason, recorded with the question."""


class RetryableError(Exception):
    """A failure that may pass if we wait: a lost connection, 429 or 5xx."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after

    def final(self, url, attempts):
        """The error to raise when the retries have run out."""
        return ServerError(f"{url} still failing after {attempts} attempts: {self}")


class MalformedReply(RetryableError):
    """A 200 whose body is not a completion."""

    def final(self, url, attempts):
        return QuestionError(f"malformed reply after {attempts} attempts: {self}")


class Cancelled(Exception):
    """The run is stopping: give up waiting to retry."""


def endpoint_url(endpoint, path):
    """The URL of an API `path` ("/chat/completions", "/completions") of a server given by its
    base URL (`http://host:8000/v1`) or by the full URL."""
    if not endpoint.startswith(("http://", "https://")):
        raise InputError(f"--endpoint must be an http:// or https:// URL, got {endpoint!r}")
    endpoint = endpoint.rstrip("/")
    for known in ("/chat/completions", "/completions"):
        if endpoint.endswith(known):
            endpoint = endpoint.removesuffix(known)
    return endpoint + path


def parse_retry_after(value):
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date); None if
    absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def capped(retry_after, cap):
    """A server's Retry-After (None: none) no longer than `cap` seconds."""
    return None if retry_after is None else min(retry_after, cap)


def backoff_delay(attempt, base, cap, retry_after=None):
    """Seconds to sleep before retry number `attempt` (0 for the first retry).

    Exponential with "equal jitter": half of min(cap, base * 2**attempt) plus a uniform draw
    of the other half, so the wait grows with every attempt while clients that failed
    together spread apart. A server's Retry-After is a lower bound.
    """
    ceiling = min(cap, base * 2 ** attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


class ServerClient:
    """Sends completion requests to one server and retries what a retry can fix.

    Thread-safe: the request threads share one client. `cancel()` makes every request waiting
    to retry give up at once. Subclasses say which API: its `path`, the request's `payload`
    and the `text` of a choice.
    """

    path = ""

    def __init__(self, endpoint, model, *, api_key=None, timeout=600.0, max_retries=8,
                 retry_delay=1.0, max_retry_delay=60.0, max_retry_after=DEFAULT_MAX_RETRY_AFTER):
        self.url = endpoint_url(endpoint, self.path)
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_retry_after = max_retry_after
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._cancelled = threading.Event()

    def cancel(self):
        """Stop retrying: requests waiting for their next attempt raise `Cancelled`."""
        self._cancelled.set()

    def sample(self, prompt, *, n, temperature, max_tokens=None, seed=None):
        """`n` completions of `prompt` (temperature 0: greedy).

        Servers that return fewer choices than asked for (some ignore `n`) are asked again for
        the rest.
        """
        texts = []
        while len(texts) < n:
            payload = {"model": self.model, **self.payload(prompt), "n": n - len(texts),
                       "temperature": temperature}
            if max_tokens is not None:
                payload["max_tokens"] = max_tokens
            if seed is not None:
                payload["seed"] = seed + len(texts)
            texts.extend(self._request(payload)[: n - len(texts)])
        return texts

    def payload(self, prompt):
        """The API's fields that carry the prompt."""
        raise NotImplementedError

    def text(self, choice):
        """The completion text of one choice; MalformedReply when it has none."""
        raise NotImplementedError

    def _request(self, payload):
        """The texts of the choices of one request, retried as the module docstring says."""
        body = json.dumps(payload).encode("utf-8")
        for attempt in itertools.count():
            if self._cancelled.is_set():
                raise Cancelled()
            try:
                return self._texts(self._post(body))
            except RetryableError as error:
                if attempt >= self.max_retries:
                    raise error.final(self.url, attempt + 1) from None
                delay = backoff_delay(attempt, self.retry_delay, self.max_retry_delay,
                                      capped(error.retry_after, self.max_retry_after))
                if self._cancelled.wait(delay):
                    raise Cancelled() from None

    def _texts(self, raw):
        try:
            response = json.loads(raw)
        except ValueError:
            raise MalformedReply(f"{self.url} answered with something that is not JSON: {raw[:300]!r}") \
                from None
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list):
            raise MalformedReply(f"{self.url} answered without a 'choices' list: {str(response)[:300]}")
        if not choices:
            raise MalformedReply(f"{self.url} returned no choices")
        return [self.text(choice) for choice in choices]

    def _post(self, body):
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise self._http_error(error) from None
        except (OSError, http.client.HTTPException) as error:
            # URLError (refused, DNS), timeouts, resets and truncated bodies: the server or the
            # network may recover.
            raise RetryableError(f"connection error: {getattr(error, 'reason', error)}") from None

    def _http_error(self, error):
        status = error.code
        message = f"{self.url} answered HTTP {status} {error.reason}: {read_error_body(error)}"
        if status == 429 or status >= 500:
            return RetryableError(message, parse_retry_after(error.headers.get("Retry-After")))
        if status in QUESTION_STATUSES:
            return QuestionError(message)
        return InputError(message)


class ChatCompletionsClient(ServerClient):
    """The chat-completions API: the prompt is one user message, the server applies the
    model's chat template."""

    path = "/chat/completions"

    def payload(self, prompt):
        return {"messages": [{"role": "user", "content": prompt}]}

    def text(self, choice):
        try:
            content = choice["message"]["content"]
        except (KeyError, TypeError):
            raise MalformedReply(f"{self.url} returned a choice without message.content: "
                                 f"{str(choice)[:300]}") from None
        return content or ""


class CompletionsClient(ServerClient):
    """The completions API: the prompt is a text or a list of token ids, continued as it is
    (no chat template)."""

    path = "/completions"

    def payload(self, prompt):
        return {"prompt": prompt}

    def text(self, choice):
        text = choice.get("text") if isinstance(choice, dict) else None
        if not isinstance(text, str):
            raise MalformedReply(f"{self.url} returned a choice without text: {str(choice)[:300]}")
        return text


def read_error_body(error):
    """The first 300 characters of an HTTP error's body, for the error message."""
    try:
        return error.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
