"""HTTP plumbing for talking to W&B: one session factory, one limiter, one retry policy.

Everything that touches the network goes through :func:`send`, which is where requests'
exceptions and HTTP statuses become the typed errors of :mod:`mirror.errors`. Nothing
above this module sees a ``requests`` exception, and no message we build contains the API
key: messages are made from explicit fields (operation, host, status, a short reason),
URLs lose their query strings (signed URLs carry tokens), and the key is scrubbed from any
server text we quote.

Three objects, each usable alone:

* :func:`make_session` builds the ``requests.Session`` (timeouts on every call, a
  keep-alive pool for a few threads, Basic auth ``api:<key>`` sent only to the W&B host,
  no urllib3 auto-retry, because retrying is decided here, per request kind).
* :class:`RateLimiter`, one per process, shared by every thread: a token bucket that
  halves its rate on 429 and recovers additively (AIMD), so a rate-limited server sees
  the whole mirror back off, not one thread at a time.
* :class:`RetryPolicy`: retries transient failures (connection errors, timeouts, 408,
  429, 5xx) with exponential backoff and full jitter, honours ``Retry-After``, and stops
  at an attempt budget (count and total time). Randomness, sleeping and the clock are
  injectable so that tests neither sleep nor guess.

The ambiguous outcome: when a request was sent and the connection died (or the server
answered 5xx) we cannot know whether the server applied it. Such errors carry
``maybe_applied = True`` (read it with :func:`maybe_applied`). The policy never re-sends
them for a non-idempotent request; the caller (the outbox) reads back first.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mirror import __version__
from mirror.errors import (
    AuthError,
    CommError,
    EditRejected,
    NotFoundError,
    ProtocolError,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from mirror.settings import Settings

__all__ = [
    "DEFAULT_TIMEOUT",
    "USER_AGENT",
    "RateLimiter",
    "RetryPolicy",
    "Timeout",
    "UpstreamSession",
    "make_session",
    "maybe_applied",
    "parse_retry_after",
    "retry_after_of",
    "send",
]

log = logging.getLogger("mirror.upstream")

T = TypeVar("T")

USER_AGENT = f"wandb-mirror/{__version__}"


class Timeout(NamedTuple):
    """Seconds to wait for the TCP connection, and between bytes of the answer.

    A tuple, so requests takes it as ``timeout=(connect, read)``. The read timeout is the
    gap between bytes, not the whole transfer: a large download that keeps flowing never
    times out, a server that stalls does.
    """

    connect: float = 5.0
    read: float = 60.0


DEFAULT_TIMEOUT = Timeout()


# --- the session ---------------------------------------------------------------------------


class _ScopedBasicAuth(requests.auth.AuthBase):
    """HTTP Basic ``api:<key>``, sent only to URLs under the base URL.

    File URLs may point at another host (presigned S3/GCS URLs); wandb-core sends
    credentials only where scheme, host and path prefix match the base URL, and so do we.
    Always installed, even without a key, so that requests never falls back to reading
    ``~/.netrc`` for some other host.
    """

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self._scope = _scope_of(base_url)
        self._header = (
            "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode("ascii")
            if api_key
            else None
        )
        self._secrets = tuple(s for s in (api_key, self._header) if s)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._header and r.url and _in_scope(r.url, self._scope):
            r.headers["Authorization"] = self._header
        return r

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return f"<_ScopedBasicAuth {'with' if self._header else 'without'} key>"


def _scope_of(base_url: str) -> tuple[str, str, str]:
    parts = urlsplit(base_url)
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def _in_scope(url: str, scope: tuple[str, str, str]) -> bool:
    parts = urlsplit(url)
    scheme, netloc, path = scope
    return (
        parts.scheme.lower() == scheme
        and parts.netloc.lower() == netloc
        and (parts.path == path or parts.path.startswith(path + "/"))
    )


class _TimeoutAdapter(HTTPAdapter):
    """An adapter that puts the session's timeout on every request that has none.

    requests has no session-wide timeout; without one a stalled server hangs a worker
    forever. Setting it at the adapter catches every call, including ``session.get``.
    """

    def __init__(self, timeout: Timeout, pool_size: int) -> None:
        # Retry(0, read=False) is requests' own default, written out: urllib3 must never
        # re-send on its own, because only we know whether a request is safe to repeat.
        super().__init__(
            pool_connections=4,
            pool_maxsize=pool_size,
            max_retries=Retry(total=0, read=False, redirect=False),
        )
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)


class UpstreamSession(requests.Session):
    """A ``requests.Session`` that knows its W&B base URL and default timeout."""

    def __init__(self, base_url: str, api_key: str | None, timeout: Timeout) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = self._scoped_auth = _ScopedBasicAuth(self.base_url, api_key)
        self._env_settings: dict[tuple[str, str, Any], Any] = {}

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any,
                                   verify: Any, cert: Any) -> Any:
        """requests' own merge, remembered per scheme and host for plain calls.

        With ``trust_env`` requests reads the proxy and CA-bundle variables and walks
        ``no_proxy`` again on every request: a third of the client CPU of a small file
        download, and a sync downloads thousands. What it finds depends only on the
        scheme and host (and the process environment, read once per session), so the
        answer is kept. Calls that pass their own proxies, verify or cert are not cached.
        """
        if not self.trust_env or proxies or verify is not None or cert is not None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        text = url.decode() if isinstance(url, bytes) else str(url)
        parts = urlsplit(text)
        key = (parts.scheme, parts.netloc, stream)
        found: Any = self._env_settings.get(key)
        if found is None:
            found = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._env_settings[key] = found
        return {**found, "proxies": dict(found["proxies"])}

    def url(self, path_or_url: str) -> str:
        """An absolute URL: server-relative paths (``/files/...``) go under the base URL."""
        if urlsplit(path_or_url).scheme:
            return path_or_url
        return urljoin(self.base_url + "/", path_or_url.lstrip("/"))

    def redact(self, text: str) -> str:
        """``text`` without the API key or the Authorization header value."""
        return self._scoped_auth.redact(text)

    def __repr__(self) -> str:
        return f"<UpstreamSession {self.base_url}>"


def make_session(
    settings: Settings | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: Timeout | tuple[float, float] = DEFAULT_TIMEOUT,
    pool_size: int = 32,
    user_agent: str = USER_AGENT,
    trust_env: bool = True,
) -> UpstreamSession:
    """The one way to build the HTTP session that talks to W&B.

    Args:
        settings: where to connect and with which key; or give ``base_url``/``api_key``.
        timeout: ``(connect, read)`` seconds applied to every request without its own.
        pool_size: keep-alive connections kept per host; size it for the worker threads
            (a pool smaller than the thread count makes threads open throwaway sockets).
        trust_env: let requests honour proxy and CA-bundle variables, as every HTTP tool
            on the user's machine does (it is requests reading them, not our code).
    """
    if settings is not None:
        base_url = base_url or settings.base_url
        api_key = api_key if api_key is not None else settings.api_key
    if not base_url:
        raise ValueError("make_session needs settings or base_url")
    session = UpstreamSession(base_url, api_key, Timeout(*timeout))
    session.trust_env = trust_env
    session.headers["User-Agent"] = user_agent
    adapter = _TimeoutAdapter(session.timeout, pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# --- the limiter ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket shared by all threads that halves its rate on 429 (AIMD).

    ``acquire()`` takes one token, sleeping until one is due. Tokens are *reserved*: a
    caller that finds the bucket empty books the next slot and sleeps outside the lock,
    so waiting threads queue fairly without holding it.

    On 429 the rate is halved (at most once per ``cooldown`` seconds, so a burst of 429s
    from concurrent requests counts as one signal, as TCP does per round trip) and, with
    ``Retry-After``, every thread is held back until that moment. Each success adds
    ``increase`` requests/s back, up to ``max_rate``.
    """

    def __init__(
        self,
        rate: float = 100.0,
        *,
        burst: float = 20.0,
        min_rate: float = 0.5,
        max_rate: float | None = None,
        increase: float = 1.0,
        decrease: float = 0.5,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1 or not 0 < decrease < 1:
            raise ValueError("rate > 0, burst >= 1 and 0 < decrease < 1 are required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.min_rate = float(min_rate)
        self.max_rate = float(max_rate if max_rate is not None else rate)
        self.increase = float(increase)
        self.decrease = float(decrease)
        self.cooldown = float(cooldown)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()
        self._not_before = 0.0
        self._last_decrease = float("-inf")

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self) -> float:
        """Book one token; return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens -= 1.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            return max(wait, self._not_before - now)

    def acquire(self) -> float:
        """Take one token, sleeping as needed; returns the seconds slept."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def on_rate_limited(self, retry_after: float | None = None) -> None:
        """The server said 429: slow everyone down."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if now - self._last_decrease >= self.cooldown:
                self.rate = max(self.min_rate, self.rate * self.decrease)
                self._last_decrease = now
            self._tokens = min(self._tokens, 0.0)
            if retry_after:
                self._not_before = max(self._not_before, now + retry_after)

    def on_success(self) -> None:
        """A request went through: recover a little of the rate."""
        with self._lock:
            if self.rate < self.max_rate:
                self._refill(self._clock())
                self.rate = min(self.max_rate, self.rate + self.increase)


# --- the retry policy ----------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """When and how long to wait before trying a failed request again.

    Attempt ``n`` (1-based) that failed transiently is followed by a sleep of
    ``uniform(0, min(max_delay, base_delay * 2**(n-1)))`` ("full jitter": clients that
    failed together do not retry together), or exactly the server's ``Retry-After``.
    The budget is ``max_attempts`` attempts and ``max_elapsed`` seconds in all; a wait
    that would overrun it is not started, and the last error is raised instead.
    ``Retry-After`` longer than ``max_retry_after`` also ends the call at once: the caller
    (sync, outbox) is better placed to come back later than a thread asleep for an hour.
    """

    max_attempts: int = 8
    max_elapsed: float = 120.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def backoff(self, attempt: int) -> float:
        """The jittered delay after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        return self.rng.uniform(0.0, ceiling)

    def should_retry(self, error: UpstreamError, *, idempotent: bool) -> bool:
        """Transient errors are retried, except possibly-applied ones of a write."""
        return error.transient and (idempotent or not maybe_applied(error))

    def call(self, attempt_fn: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run ``attempt_fn`` until it succeeds, fails for good, or the budget is spent.

        ``attempt_fn`` raises the typed errors of :mod:`mirror.errors`; anything else
        propagates untouched (it is a bug, not weather).
        """
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_fn()
            except UpstreamError as error:
                if not self.should_retry(error, idempotent=idempotent):
                    raise
                hinted = retry_after_of(error)
                if hinted is not None and hinted > self.max_retry_after:
                    raise
                delay = hinted if hinted is not None else self.backoff(attempt)
                elapsed = self.clock() - start
                if attempt >= self.max_attempts or elapsed + delay > self.max_elapsed:
                    raise
                log.info(
                    "%s failed (%s); retry %d/%d in %.2fs",
                    error.operation or "request",
                    _short(error),
                    attempt,
                    self.max_attempts - 1,
                    delay,
                )
                self.sleep(delay)


def _short(error: UpstreamError) -> str:
    return f"HTTP {error.status}" if error.status else type(error).__name__


# --- error facts not (yet) declared on the error classes ----------------------------------


def maybe_applied(error: BaseException) -> bool:
    """True if the request may have taken effect although it failed (ambiguous outcome).

    Set on errors raised by :func:`send`: the request was sent and then the connection
    dropped, the read timed out, or the server answered 5xx. A write that failed this way
    must be read back before it is sent again.
    """
    return bool(getattr(error, "maybe_applied", False))


def retry_after_of(error: BaseException) -> float | None:
    """The server's ``Retry-After`` in seconds, carried by a 429 or 503 error, if any."""
    value = getattr(error, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) else None


def _mark(error: CommError, *, applied: bool, retry_after: float | None = None) -> CommError:
    # mirror.errors declares neither attribute yet; setattr keeps mypy honest meanwhile.
    setattr(error, "maybe_applied", applied)  # noqa: B010
    if retry_after is not None and not isinstance(error, RateLimited):
        setattr(error, "retry_after", retry_after)  # noqa: B010
    return error


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when absent or unreadable (then our own backoff applies), never a
    negative number.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


# --- sending one request -------------------------------------------------------------------

_QUERY_RE = re.compile(r"\?[^\s'\")>]*")


def _safe_url(url: str) -> str:
    """The URL for a message: no userinfo, no query string (signed URLs hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (requests -> urllib3 -> socket), outermost first."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    while queue:
        cur = queue.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        linked: list[Any] = [getattr(cur, "reason", None), cur.__cause__, cur.__context__]
        queue.extend(x for x in [*linked, *cur.args] if isinstance(x, BaseException))


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 exception, in a few words."""
    inner = list(_chain(exc))[-1]
    if isinstance(inner, OSError) and inner.strerror:
        text = inner.strerror
    else:
        # urllib3 prefixes its messages with the connection object's repr: keep the tail.
        text = (str(inner) or type(inner).__name__).rsplit(": ", 1)[-1]
    return f"{type(inner).__name__}: {text}"[:200]


def _not_sent(exc: BaseException) -> bool:
    """True when the request provably never reached the server (no TCP connection)."""
    return any(
        isinstance(
            e,
            (
                requests.exceptions.ConnectTimeout,
                urllib3.exceptions.NewConnectionError,
                urllib3.exceptions.ConnectTimeoutError,
                ConnectionRefusedError,
            ),
        )
        for e in _chain(exc)
    )


def _scrub(exc: BaseException) -> BaseException:
    """Drop the request/response objects a requests exception carries.

    ``exc.request.headers`` holds the Authorization header; the exception is kept on the
    error (``CommError.exc``) and chained, so it must not carry credentials around.
    """
    if isinstance(exc, requests.RequestException):
        exc.request = None
        exc.response = None
    return exc


def translate_exception(
    exc: requests.RequestException, *, operation: str, url: str, redact: Callable[[str], str]
) -> UpstreamError:
    """Map an exception of requests (no HTTP answer) to our typed error."""
    where = _safe_url(url)
    reason = redact(_QUERY_RE.sub("?…", _reason(exc)))
    _scrub(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return UpstreamError(
            f"{operation}: TLS failed with {where}: {reason}",
            operation=operation,
            hint="Check the server certificate, or REQUESTS_CA_BUNDLE for a private CA.",
        )
    if isinstance(
        exc,
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.TooManyRedirects,
        ),
    ):
        return ProtocolError(f"{operation}: unusable URL {where}: {reason}", operation=operation)
    if isinstance(
        exc,
        (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ),
    ):
        sent = not _not_sent(exc)
        what = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        if sent:
            what += " after the request was sent"
        err = UpstreamUnavailable(
            f"{operation}: {what} ({where}): {reason}", exc, operation=operation
        )
        return _mark(err, applied=sent)
    return UpstreamUnavailable(
        f"{operation}: request failed ({where}): {reason}", exc, operation=operation
    )


def _body_message(resp: requests.Response, redact: Callable[[str], str]) -> str:
    """What the server said: ``errors[0].message`` of a JSON body, else the raw text."""
    text = ""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        msgs = [
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in body["errors"][:3]
        ]
        text = "; ".join(msgs)
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    if not text:
        text = resp.text[:200].strip()
    text = " ".join(text.split())
    return redact(_QUERY_RE.sub("?…", text))[:300]


def error_for_status(
    resp: requests.Response, *, operation: str, write: bool, redact: Callable[[str], str]
) -> UpstreamError:
    """Map a non-2xx answer to our typed error.

    Reads: 404/410/403 mean the thing is not there (or not visible to this key); other
    4xx mean we spoke wrongly (protocol). Writes: every terminal 4xx is a rejected edit,
    the outbox's dead letter. 401 is always an auth problem, never retried.
    """
    status = resp.status_code
    where = _safe_url(resp.url or "")
    said = _body_message(resp, redact)
    msg = f"{operation}: HTTP {status} from {where}" + (f": {said}" if said else "")
    if status == 401:
        return AuthError(msg, status=status, operation=operation)
    if status == 429:
        after = parse_retry_after(resp.headers.get("Retry-After"))
        return _mark(
            RateLimited(msg, retry_after=after, status=status, operation=operation), applied=False
        )
    if status == 408:
        return _mark(UpstreamUnavailable(msg, status=status, operation=operation), applied=False)
    if status >= 500 and status != 501:
        after = parse_retry_after(resp.headers.get("Retry-After"))
        err = UpstreamUnavailable(msg, status=status, operation=operation)
        return _mark(err, applied=True, retry_after=after)
    if write and 400 <= status < 500:
        return EditRejected(msg, status=status, operation=operation)
    if status in (403, 404, 410):
        return NotFoundError(msg, status=status, operation=operation)
    return ProtocolError(msg, status=status, operation=operation)


def send(
    session: UpstreamSession,
    method: str,
    url: str,
    *,
    operation: str,
    limiter: RateLimiter | None = None,
    write: bool = False,
    **kwargs: Any,
) -> requests.Response:
    """One HTTP request, no retries: returns a 2xx response or raises a typed error.

    ``write`` says whether a 4xx is a rejected edit (terminal for the outbox) or a failed
    read. The limiter is paid before sending and told about 429s and successes. With
    ``stream=True`` the caller must read (or close) the response.
    """
    url = session.url(url)
    if limiter is not None:
        limiter.acquire()
    try:
        resp = session.request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise translate_exception(exc, operation=operation, url=url, redact=session.redact) from exc
    if 200 <= resp.status_code < 300:
        if limiter is not None:
            limiter.on_success()
        return resp
    try:
        error = error_for_status(resp, operation=operation, write=write, redact=session.redact)
    finally:
        resp.close()
    if limiter is not None and isinstance(error, RateLimited):
        limiter.on_rate_limited(error.retry_after)
    raise error


def stream_body(
    resp: requests.Response,
    *,
    operation: str,
    url: str,
    redact: Callable[[str], str],
    chunk_size: int,
) -> Iterable[bytes]:
    """Iterate a streamed body, translating mid-transfer failures (connection lost)."""
    try:
        yield from resp.iter_content(chunk_size=chunk_size)
    except requests.RequestException as exc:
        raise translate_exception(exc, operation=operation, url=url, redact=redact) from exc
    finally:
        resp.close()
