"""Retrying reads and writes: how hard to try (`RetryPolicy`), which failures a later attempt may not meet
(`classify`: throttling, 5xx, connection errors and timeouts are retried; a missing or refused object never is),
and the quarantine reason a failure ends with (`FetchFailed`). `storage` re-exports these: its callers read
and write through it (its `Fetcher` and `write_parquet` retry with `with_retries`)."""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import urllib3

from geosurge.redaction import redact_uri
from geosurge.uri_access import UriRefused

T = TypeVar("T")

# quarantine reasons of a failed read
NOT_FOUND = "not_found"
TIMEOUT = "timeout"
FETCH_ERROR = "fetch_error"
TOO_LARGE = "too_large"
BAD_URI = "bad_uri"


class TooLarge(ValueError):
    """A read that would take more than its byte limit."""


class DeadlineExceeded(TimeoutError):
    """A fetch that ran past its total deadline (however fast each socket read was)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` after the first attempt, sleeping a random time in [0, backoff] where backoff
    = min(max_backoff_s, backoff_s * 2**attempt) (exponential backoff with full jitter); `timeout_s` per request."""

    retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 30.0
    deadline_s: float | None = None  # total for one fetch, retries included; None: no total limit

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2.0**attempt))


class FetchFailed(Exception):
    """A read that failed for good. `reason` is a quarantine reason (not_found, timeout, fetch_error)."""

    def __init__(self, reason: str, detail: str, retries: int = 0):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retries = retries


class HttpStatus(OSError):
    """An HTTP answer that is not 200, with its Retry-After (seconds) when the server sent one."""

    def __init__(self, uri: str, status: int, retry_after: float | None):
        super().__init__(f"{uri}: HTTP {status}")
        self.status = status
        self.retry_after = retry_after


# AWS SDK error names (as pyarrow reports them) and curl failures that a later attempt may not meet.
_TRANSIENT_S3 = re.compile(
    r"SLOW_DOWN|SlowDown|THROTTL|Throttl|SERVICE_UNAVAILABLE|ServiceUnavailable|INTERNAL_FAILURE|InternalError|"
    r"NETWORK_CONNECTION|REQUEST_TIMEOUT|RequestTimeout|curlCode|Could not connect|Couldn't connect|"
    r"Connection refused|Connection reset|Broken pipe|Timeout was reached|timed out|"
    r"(?:HTTP|status|response) ?(?:code)?:? ?(?:429|5\d\d)\b"
)
_TIMEOUT_TEXT = re.compile(r"curlCode: 28|Timeout was reached|timed out|REQUEST_TIMEOUT|RequestTimeout", re.IGNORECASE)


def classify(error: BaseException) -> tuple[str, bool]:
    """(quarantine reason, worth retrying) for an error raised by a read or write."""
    try:
        import requests
    except ImportError:  # pragma: no cover - requests is a dependency
        requests = None
    if isinstance(error, FileNotFoundError):
        return NOT_FOUND, False
    if isinstance(error, TooLarge):
        return TOO_LARGE, False
    if isinstance(error, UriRefused):
        return BAD_URI, False
    if isinstance(error, HttpStatus):
        if error.status in (404, 410):
            return NOT_FOUND, False
        if error.status == 408:
            return TIMEOUT, True
        return FETCH_ERROR, error.status == 429 or error.status >= 500
    if isinstance(error, urllib3.exceptions.HTTPError):  # the Fetcher's HTTP client
        if isinstance(error, urllib3.exceptions.NewConnectionError):  # before TimeoutError: it subclasses one
            return FETCH_ERROR, True
        if isinstance(error, urllib3.exceptions.TimeoutError):
            return TIMEOUT, True
        # a malformed URL or a corrupt Content-Encoding does not mend; a reset or cut-short body may
        permanent = (urllib3.exceptions.LocationValueError, urllib3.exceptions.DecodeError)
        return FETCH_ERROR, not isinstance(error, permanent)
    if requests is not None and isinstance(error, requests.Timeout):
        return TIMEOUT, True
    if requests is not None and isinstance(error, requests.ConnectionError):
        return FETCH_ERROR, True
    if isinstance(error, (TimeoutError, socket.timeout)):
        return TIMEOUT, True
    if isinstance(error, (ConnectionError, socket.gaierror)):
        return FETCH_ERROR, True
    if isinstance(error, (PermissionError, IsADirectoryError)):
        return FETCH_ERROR, False
    if isinstance(error, OSError):
        text = str(error)
        if "ACCESS_DENIED" in text or "AccessDenied" in text or "NO_SUCH" in text:
            return FETCH_ERROR, False
        if _TRANSIENT_S3.search(text):
            return (TIMEOUT if _TIMEOUT_TEXT.search(text) else FETCH_ERROR), True
        return FETCH_ERROR, False
    return FETCH_ERROR, False


def with_retries(action: Callable[[], T], policy: RetryPolicy, what: str = "",
                 deadline: float | None = None) -> tuple[T, int]:
    """(action's result, retries it took). Retries transient failures (see `classify`) with backoff; raises
    FetchFailed once a failure is permanent, the retries are spent or `deadline` (time.monotonic()) would pass."""
    attempt = 0
    while True:
        try:
            return action(), attempt
        except Exception as error:
            reason, transient = classify(error)
            delay = policy.delay(attempt)
            retry_after = getattr(error, "retry_after", None)
            if retry_after:  # the server said how long to wait (HTTP 429/503 Retry-After)
                delay = max(delay, min(retry_after, policy.max_backoff_s))
            late = deadline is not None and time.monotonic() + delay >= deadline
            if not transient or attempt >= policy.retries or late:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                said = redact_uri(str(error))  # our own errors name the uri already: say it once
                detail = f"{said}{tries}" if not what or said.startswith(redact_uri(what)) else \
                    redact_uri(f"{what}: {error}{tries}")
                raise FetchFailed(TIMEOUT if late and transient else reason, detail, attempt) from error
            time.sleep(delay)
            attempt += 1
