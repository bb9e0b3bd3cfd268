"""A client for OpenAI-compatible chat-completions servers (vLLM, SGLang, TGI and others) that
retries what a retry can fix.

Connection errors, 429 (at least as long as its Retry-After says) and 5xx are retried with
exponential backoff and jitter; any other 4xx raises InputError with the server's message.
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


class ServerError(RuntimeError):
    """The server kept failing after every retry, or answered with something that is not a
    chat completion."""


class RetryableError(Exception):
    """A failure that may pass if we wait: a lost connection, 429 or 5xx."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(Exception):
    """The run is stopping (another request failed for good): give up waiting to retry."""


def chat_completions_url(endpoint):
    """The chat-completions URL of a server given by its base URL (`http://host:8000/v1`) or
    by the full URL."""
    if not endpoint.startswith(("http://", "https://")):
        raise InputError(f"--endpoint must be an http:// or https:// URL, got {endpoint!r}")
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    return endpoint + "/chat/completions"


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


def backoff_delay(attempt, base, cap, retry_after=None):
    """Seconds to sleep before retry number `attempt` (0 for the first retry).

    Exponential with "equal jitter": half of min(cap, base * 2**attempt) plus a uniform draw
    of the other half, so the wait grows with every attempt while clients that failed
    together spread apart. A server's Retry-After is a lower bound.
    """
    ceiling = min(cap, base * 2 ** attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


class ChatCompletionsClient:
    """Sends chat-completion requests to one server and retries what a retry can fix.

    Thread-safe: the generation threads share one client. `cancel()` makes every request
    waiting to retry give up at once.
    """

    def __init__(self, endpoint, model, *, api_key=None, timeout=600.0, max_retries=8,
                 retry_delay=1.0, max_retry_delay=60.0):
        self.url = chat_completions_url(endpoint)
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._cancelled = threading.Event()

    def cancel(self):
        """Stop retrying: requests waiting for their next attempt raise `Cancelled`."""
        self._cancelled.set()

    def sample(self, prompt, *, n, temperature, max_tokens=None):
        """`n` completions of the user message `prompt`.

        Servers that return fewer choices than asked for (some ignore `n`) are asked again for
        the rest.
        """
        texts = []
        while len(texts) < n:
            choices = self._complete(prompt, n - len(texts), temperature, max_tokens)
            if not choices:
                raise ServerError(f"{self.url} returned no choices")
            texts.extend(choice_text(choice, self.url) for choice in choices[: n - len(texts)])
        return texts

    def _complete(self, prompt, n, temperature, max_tokens):
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "n": n,
            "temperature": temperature,
        }
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        response = self._post_with_retries(json.dumps(payload).encode("utf-8"))
        choices = response.get("choices") if isinstance(response, dict) else None
        if not isinstance(choices, list):
            raise ServerError(f"{self.url} answered without a 'choices' list: {str(response)[:300]}")
        return choices

    def _post_with_retries(self, body):
        for attempt in itertools.count():
            if self._cancelled.is_set():
                raise Cancelled()
            try:
                return self._post(body)
            except RetryableError as error:
                if attempt >= self.max_retries:
                    raise ServerError(
                        f"{self.url} still failing after {attempt + 1} attempts: {error}") from None
                delay = backoff_delay(attempt, self.retry_delay, self.max_retry_delay, error.retry_after)
                if self._cancelled.wait(delay):
                    raise Cancelled() from None

    def _post(self, body):
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise self._http_error(error) from None
        except (OSError, http.client.HTTPException) as error:
            # URLError (refused, DNS), timeouts, resets and truncated bodies: the server or the
            # network may recover.
            raise RetryableError(f"connection error: {getattr(error, 'reason', error)}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"{self.url} answered with something that is not JSON: {raw[:300]!r}") from None

    def _http_error(self, error):
        status = error.code
        detail = read_error_body(error)
        message = f"{self.url} answered HTTP {status} {error.reason}: {detail}"
        if status == 429 or status >= 500:
            return RetryableError(message, parse_retry_after(error.headers.get("Retry-After")))
        return InputError(message)


def read_error_body(error):
    """The first 300 characters of an HTTP error's body, for the error message."""
    try:
        return error.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""


def choice_text(choice, url):
    """The message text of one chat-completion choice."""
    try:
        content = choice["message"]["content"]
    except (KeyError, TypeError):
        raise ServerError(f"{url} returned a choice without message.content: {str(choice)[:300]}") from None
    return content or ""
