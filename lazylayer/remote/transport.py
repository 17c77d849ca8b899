"""Byte ranges of remote blobs: HTTP(S) with our own engine, anything else through fsspec.

The engine (:class:`Transport`) owns one event loop, on its own thread, and one
pooled aiohttp session.  Everything above it is written once, as coroutines,
and offered twice: ``await blob.aread_ranges(...)`` from any event loop and
``blob.read_ranges(...)`` for callers without one (the C reader's callbacks,
FUSE threads, plain scripts).

What a read does, in order:

1. **Plan** (:func:`plan_requests`): ranges closer than ``coalesce_gap`` are
   merged into one request (one range per request: some registries reject
   multi-range), and anything longer than ``part_size`` is split into parts
   fetched in parallel, so a large sequential read fills the link instead of
   waiting on one stream's round trips.
2. **Send**, at most ``max_connections`` at once: redirects to blob storage are
   followed (and remembered for ``redirect_ttl`` seconds, without our
   credentials: presigned URLs carry their own), authentication challenges
   are answered once per request by the caller's :class:`Authorizer`.
3. **Check** every answer: ``206`` with exactly the ``Content-Range`` asked
   for and exactly that many bytes (a ``200`` — a server that ignores Range —
   is streamed and sliced, never buffered whole).  Short bodies resume where
   they stopped; resets, stalls (no byte for ``read_timeout``), 408/429/5xx are
   retried with exponential backoff and jitter, in rounds over the endpoints,
   until ``deadline``, which covers the whole logical read (retries and
   re-fetches included); then :class:`~lazylayer.errors.RemoteTimeoutError`.
   An endpoint that failed a whole read that way fails new reads at once for
   ``down_memo`` seconds.
4. **Verify**: when the caller knows a range's digest (a lazy layer's frames,
   a whole blob), the bytes are checked before they are returned and fetched
   again if they do not match; a persistent mismatch is an
   :class:`~lazylayer.errors.IntegrityError`.  Without a digest, transport
   corruption that keeps the length cannot be detected here: that is what
   digests are for.

``urls`` may list mirrors before the origin: each logical read tries them in
order, falls through on 404, refusals and exhausted retries, and a mirror that
failed is skipped for ``mirror_cooldown`` seconds (in the first round of later
reads).  ``retries`` counts attempts per endpoint per round; rounds go on
until the deadline for endpoints that have answered this transport before.

No size a descriptor declares sizes an allocation: buffers grow as bytes
arrive, every ``Content-Range`` total must match the declared size, and
:class:`~lazylayer.remote.HttpBlob` asks the server's size before planning a
large read by a declared one.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import concurrent.futures
import contextlib
import contextvars
import hashlib
import itertools
import logging
import os
import random
import re
import ssl
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Protocol,
    Sequence,
    TypeVar,
)
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from cachetools import TTLCache

from .. import errors

log = logging.getLogger(__name__)
T = TypeVar("T")
Range = tuple[int, int]  # (offset, size)


@dataclass(frozen=True)
class RemoteOptions:
    """How remote reads behave.  The defaults suit a registry across a WAN."""

    max_connections: int = 16       #: requests in flight at once, per transport
    background_connections: int = 8  #: further requests for background work (prefetch), never taken from the above
    part_size: int = 4 << 20        #: longer reads are split into parts of this size, fetched in parallel
    coalesce_gap: int = 256 << 10   #: ranges closer than this are fetched by one request
    readahead: int = 64 << 20       #: most a sequential file object fetches ahead of its reader
    connect_timeout: float = 10.0   #: seconds to open a connection
    read_timeout: float = 30.0      #: seconds without a byte (before or during a body) before retrying
    deadline: float = 300.0         #: seconds a logical read may take, retries included
    retries: int = 5                #: further attempts per endpoint per round after a retryable failure
    backoff: float = 0.1            #: first backoff (seconds); doubles per attempt, with jitter
    max_backoff: float = 5.0        #: the backoff's cap (rounds go on at this pace until the deadline)
    tls_verify: bool = True         #: verify HTTPS certificates (False: like skopeo --tls-verify=false)
    redirect_ttl: float = 60.0      #: seconds a blob's redirect target is reused
    mirror_cooldown: float = 30.0   #: seconds a failed mirror is skipped (in the first round of a read)
    down_memo: float = 5.0          #: seconds new reads fail at once after a read failed on every endpoint (0: off)
    user_agent: str = "lazylayer"

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.background_connections < 1 or self.part_size < 1 \
                or self.coalesce_gap < 0:
            raise ValueError("max_connections, background_connections and part_size must be >= 1, "
                             "coalesce_gap >= 0")


@dataclass
class TransportStats:
    """Counters, for tests and benchmarks (updated on the transport's loop thread)."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0
    redirects: int = 0
    digest_mismatches: int = 0


class Authorizer(Protocol):
    """Adds credentials to requests and answers challenges (see lazylayer.registry.RegistryAuth)."""

    def apply(self, url: str, headers: dict[str, str]) -> None:
        """Add ``Authorization`` for ``url`` if there is anything to add."""

    async def challenge(self, transport: Transport, url: str, status: int, header: str | None) -> bool:
        """React to a 401/403 from ``url``; True if the request should be sent again."""


def clean_url(url: str) -> str:
    """``url`` without query, fragment or userinfo: safe to put in messages."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


class Retry(Exception):
    """A failure worth another attempt, raised inside an ``attempt`` of :meth:`Transport.call`.

    ``delay``: wait at least this long first (``Retry-After``); ``timeout``: it was a stall.
    """

    def __init__(self, message: str, delay: float | None = None, timeout: bool = False) -> None:
        super().__init__(message)
        self.delay = delay
        self.timeout = timeout

    @classmethod
    def network(cls, exc: BaseException) -> Retry:
        """A connection-level failure (reset, refused, stalled, malformed response)."""
        return cls(network_error_text(exc), timeout=isinstance(exc, (asyncio.TimeoutError, TimeoutError)))


_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")
_SSL_NOISE = re.compile(r" ssl:(?:default|True|False|None|<[^>]*>)")


def network_error_text(exc: BaseException) -> str:
    """A network failure in words, for a person.

    ``cannot connect to HOST:PORT: Connection refused`` rather than aiohttp's
    ``ClientConnectorError: Cannot connect to host HOST:PORT ssl:default [Connect
    call failed ('127.0.0.1', PORT)]`` (``ssl:default`` even for plain HTTP);
    other failures keep their type's name, without aiohttp's ``ssl:...`` noise.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        return f"cannot connect to {exc.host}:{exc.port}: {_os_reason(cause)}"
    text = _SSL_NOISE.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _os_reason(err: BaseException | None) -> str:
    """Why a connection failed: ``Connection refused``, ``Name or service not known``, a TLS error."""
    if err is None:
        return "failed"
    if isinstance(err, OSError) and not isinstance(err, ssl.SSLError):
        code = err.errno if isinstance(err.errno, int) and err.errno > 0 else None
        if code is None:  # asyncio's "Multiple exceptions: [Errno 111] ..., [Errno 111] ..." (IPv6 and IPv4)
            codes = set(_ERRNO_IN_TEXT.findall(str(err)))
            code = int(codes.pop()) if len(codes) == 1 else None
        if code is not None:
            return os.strerror(code)
        return err.strerror or str(err) or type(err).__name__
    return str(err) or type(err).__name__


_Retry = Retry  # the old private name

#: What a connection-level failure raises: reset, refused, stalled, malformed response.
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@contextlib.contextmanager
def network_retry(on_error: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside an ``attempt`` of :meth:`Transport.call`: a network failure becomes a :class:`Retry`.

    ``on_error`` runs first (an upload forgets a session it cannot resume).
    The one place that decides which exceptions are the network's fault.
    """
    try:
        yield
    except NETWORK_ERRORS as exc:
        if on_error is not None:
            on_error()
        raise Retry.network(exc) from None


# ------------------------------------------------------------------ planning


def plan_requests(ranges: Sequence[Range], gap: int, part_size: int) -> list[Range]:
    """The requests that fetch ``ranges``: nearby ones merged, long ones split into parts.

    Two ranges are merged when the hole between them is at most ``gap`` bytes
    and the merged request stays within ``part_size``; a longer range is split
    into equal parts of at most ``part_size``.  The result is sorted.
    """
    spans = sorted((o, o + n) for o, n in ranges if n > 0)
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s - merged[-1][1] <= gap and max(e, merged[-1][1]) - merged[-1][0] <= part_size:
            merged[-1][1] = max(e, merged[-1][1])
        elif merged and s < merged[-1][1]:  # overlaps but too long to merge: extend, split below
            merged[-1][1] = max(e, merged[-1][1])
        else:
            merged.append([s, e])
    out: list[Range] = []
    for s, e in merged:
        count = -(-(e - s) // part_size)
        step = -(-(e - s) // count)
        for o in range(s, e, step):
            out.append((o, min(step, e - o)))
    return out


def _assemble(ranges: Sequence[Range], requests: list[Range], bodies: list[bytes]) -> list[bytes]:
    starts = [o for o, _ in requests]
    out = []
    for off, size in ranges:
        if size <= 0:
            out.append(b"")
            continue
        i = bisect.bisect_right(starts, off) - 1
        pieces, pos, end = [], off, off + size
        while pos < end:
            ro, rn = requests[i]
            if not ro <= pos < ro + rn:
                i += 1
                continue
            take = min(end, ro + rn) - pos
            pieces.append(memoryview(bodies[i])[pos - ro:pos - ro + take])
            pos += take
            i += 1
        out.append(bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces))
    return out


def sha256_of(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ transport

_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("lazylayer_background", default=False)
#: The loop time by which the logical read under way must end (None: outside one; each call starts its own).
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("lazylayer_deadline", default=None)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Requests started in this block (on this thread) are background work, such as prefetch.

    They take their connections from ``RemoteOptions.background_connections``,
    a pool of their own, so a foreground read never queues behind them; they
    still share the link (TCP shares it fairly).
    """
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


def in_background() -> bool:
    """True inside a :func:`background` block on this thread."""
    return _BACKGROUND.get()


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}


class Transport:
    """One event-loop thread and one pooled aiohttp session, shared by many blobs.

    Thread safe: any thread may call :meth:`run` (except the loop's own
    thread, where coroutines must be awaited instead).  :func:`default_transport`
    is shared by everything that is not given its own.
    """

    def __init__(self, options: RemoteOptions | None = None) -> None:
        self.options = options or RemoteOptions()
        self.stats = TransportStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lazylayer-http", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self._bg_slots: asyncio.Semaphore | None = None
        self._redirects: TTLCache = TTLCache(maxsize=4096, ttl=self.options.redirect_ttl)
        self._down: dict[str, float] = {}  # mirror base URL -> monotonic time its cooldown ends
        # base URL -> (monotonic time the memo ends, error class, message): the endpoint failed a whole read
        self._memo: dict[str, tuple[float, type[errors.RemoteError], str]] = {}
        self._reached: set[str] = set()  # base URLs that have answered (an outage there is ridden out)
        self._insecure: set[str] = set()
        self._closed = False

    # -- running coroutines

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the transport's loop and wait for its result (the synchronous facade)."""
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise ValueError("the transport is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Transport.run() called on the transport's own loop: await the coroutine")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def call_soon(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` from any event loop (it runs on the transport's)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            o = self.options
            connector = aiohttp.TCPConnector(limit=o.max_connections + o.background_connections, limit_per_host=0, ttl_dns_cache=300,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, read_bufsize=1 << 20, auto_decompress=False,
                headers={"User-Agent": o.user_agent},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=o.connect_timeout, sock_read=o.read_timeout))
            self._slots = asyncio.Semaphore(o.max_connections)
            self._bg_slots = asyncio.Semaphore(o.background_connections)
        return self._session

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has started (reads then fail; background work should stop quietly)."""
        return self._closed or self._closing

    _closing = False

    def close(self) -> None:
        """Close the session and stop the loop thread (idempotent)."""
        if self._closed:
            return
        self._closing = True
        if self._session is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one HTTP exchange

    def skip_tls_verify(self, netloc: str) -> None:
        """Do not verify the certificate of ``host[:port]`` (a registry opened with tls_verify=False)."""
        self._insecure.add(netloc)

    def _ssl(self, url: str) -> Any:
        # False: aiohttp's own context that skips verification (no certificate store to load, so
        # a transport costs nothing at start-up); True: aiohttp's default, verifying context.
        if url.startswith("https:") and (not self.options.tls_verify or urlsplit(url).netloc in self._insecure):
            return False
        return True

    @asynccontextmanager
    async def open(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                   data: Any = None, auth: Authorizer | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request: redirects followed, one auth challenge answered.  Yields the response.

        Network failures and retryable statuses raise the internal ``Retry``;
        :meth:`call` turns them into retries.  Other statuses are left to the caller.
        """
        session = await self.session()
        origin = urlsplit(url).netloc
        cached = self._redirects.get(url) if method in ("GET", "HEAD") else None
        target = cached or url
        answered = False
        for _hop in range(8):
            h = dict(headers or {})
            if auth is not None and urlsplit(target).netloc == origin:
                auth.apply(target, h)  # never send our credentials to another host
            try:
                self.stats.requests += 1
                resp = await session.request(method, target, headers=h, data=data, allow_redirects=False,
                                             ssl=self._ssl(target))
            except aiohttp.ClientConnectorCertificateError as exc:
                raise errors.RemoteError(f"{clean_url(target)}: TLS certificate not trusted ({exc.certificate_error}); "
                                         "use tls_verify=False / --tls-verify=false to skip the check",
                                         url=clean_url(target)) from None
            except (*NETWORK_ERRORS, OSError) as exc:
                if cached and target == cached:
                    self._redirects.pop(url, None)
                raise Retry.network(exc) from None
            status = resp.status
            self._reached.add(_base(target))
            if status in _REDIRECT_STATUS and "Location" in resp.headers:
                resp.release()
                target = urljoin(target, resp.headers["Location"])
                self.stats.redirects += 1
                if method in ("GET", "HEAD"):
                    self._redirects[url] = target
                continue
            if cached and target == cached and status in (400, 401, 403, 404, 410):
                # An expired presigned URL: forget it and ask the origin again.
                resp.release()
                self._redirects.pop(url, None)
                cached, target = None, url
                continue
            if status in (401, 403) and auth is not None and not answered and urlsplit(target).netloc == origin:
                header = resp.headers.get("WWW-Authenticate")
                resp.release()
                answered = True
                if await auth.challenge(self, target, status, header):
                    continue
                raise errors.AuthError(f"{clean_url(target)}: {status} {_reason(status)} (the credentials, or "
                                       "their absence, are not accepted)", status=status, url=clean_url(target))
            try:
                yield resp
            finally:
                resp.release()
            return
        raise errors.RemoteError(f"{clean_url(url)}: too many redirects", url=clean_url(url))

    @contextlib.contextmanager
    def deadline_scope(self) -> Iterator[None]:
        """On the transport's loop: every :meth:`call` inside (tasks started inside too) shares one deadline.

        The deadline (``RemoteOptions.deadline`` from now) covers the whole
        logical read — its parts, retries and digest re-fetches.  Nested
        scopes keep the outer deadline.
        """
        if _DEADLINE.get() is not None:
            yield
            return
        token = _DEADLINE.set(asyncio.get_running_loop().time() + self.options.deadline)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    def _check_memo(self, urls: Sequence[str], what: str) -> None:
        """Fail at once if every endpoint failed a whole read within the last ``down_memo`` seconds."""
        if not self._memo:
            return
        now = time.monotonic()
        found = []
        for url in urls:
            memo = self._memo.get(_base(url))
            if memo is None or memo[0] <= now:
                return
            found.append((url, memo))
        url, (_until, kind, message) = found[-1]
        raise kind(f"{what}: {message} (a read failed on every endpoint less than "
                   f"{self.options.down_memo:g} s ago: not retried yet)", url=clean_url(url))

    async def call(self, urls: Sequence[str], attempt: Callable[[str], Awaitable[T]], what: str) -> T:
        """Run ``attempt(url)`` until it succeeds or the deadline passes.

        Rounds over the endpoints (mirrors in order, then the origin): up to
        ``1 + retries`` attempts each, with capped exponential backoff and
        jitter between attempts and rounds.  ``attempt`` raises ``Retry`` for
        transient failures.  A mirror is left for the next endpoint on 404 or a
        refusal (for the rest of this call) and when its retries run out (then
        it cools down: other calls skip it in their first round for
        ``mirror_cooldown`` s).  Any other error from the origin ends the call
        at once.  If none of the endpoints has ever answered this transport
        (a wrong host or port rather than an outage), one round is all.  The deadline is the enclosing :meth:`deadline_scope`'s, or
        ``deadline`` from now.  When the deadline passes, every endpoint tried
        is remembered as down for ``down_memo`` seconds: calls whose endpoints
        are all down fail at once, and a success on an endpoint forgets it.
        """
        o = self.options
        self._check_memo(urls, what)
        await self.session()
        assert self._slots is not None and self._bg_slots is not None
        slots = self._bg_slots if _BACKGROUND.get() else self._slots
        loop = asyncio.get_running_loop()
        deadline = _DEADLINE.get() or loop.time() + o.deadline
        last: str | None = None
        stalled = False
        passed: set[int] = set()   # mirrors that cannot serve this (404, refusal)
        failed: set[str] = set()   # endpoints that failed with transient errors
        tries = 0                  # backoffs so far: the exponent
        url = urls[-1]

        def gave_up() -> errors.RemoteError:
            why = f" (last error: {last})" if last else " (no answer before it)"
            kind = errors.RemoteTimeoutError
            err = kind(f"{what}: no answer within the {o.deadline:g} s deadline{why}", url=clean_url(url))
            if o.down_memo > 0 and last:
                until = time.monotonic() + o.down_memo
                for b in failed:
                    self._memo[b] = (until, kind, f"{b} failed: {last}")
            return err

        async def pause(retry_after: float | None) -> None:
            nonlocal tries
            tries += 1
            self.stats.retries += 1
            delay = min(o.max_backoff, o.backoff * (2 ** min(tries, 60))) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = min(max(delay, retry_after), o.max_backoff * 4)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))

        for round_ in itertools.count():
            retry_after: float | None = None
            for i, url in enumerate(urls):
                mirror = i < len(urls) - 1
                base = _base(url)
                if i in passed or (mirror and round_ == 0 and self._down.get(base, 0) > time.monotonic()):
                    continue
                n = 0
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise gave_up()
                    try:
                        async with slots:
                            result = await asyncio.wait_for(attempt(url), remaining)
                        self._memo.pop(base, None)
                        self._reached.add(base)
                        return result
                    except Retry as exc:
                        last, stalled, retry_after = str(exc), exc.timeout, exc.delay
                        failed.add(base)
                        if n == o.retries:
                            break
                        n += 1
                        log.debug("%s: %s: retry %d: %s", what, base, n, last)
                        await pause(exc.delay)
                    except asyncio.TimeoutError:
                        failed.add(base)
                        last = last or f"{base}: stalled"
                        raise gave_up() from None
                    except errors.RemoteError as exc:
                        if not mirror:
                            raise
                        # A refusal or a 404: the mirror works, it just cannot serve this.
                        log.info("%s: mirror %s: %s; trying the next endpoint", what, base, exc)
                        last = str(exc)
                        passed.add(i)
                        n = -1
                        break
                if mirror and n >= 0:  # retries exhausted: the mirror is unwell, skip it for a while
                    self._down[base] = time.monotonic() + o.mirror_cooldown
                    log.info("%s: mirror %s failed (%s); skipping it for %g s", what, base, last, o.mirror_cooldown)
            # Every endpoint failed this round with transient errors: another round, after a backoff --
            # unless none of them has ever answered (a wrong host or port, not an outage).
            if not any(_base(u) in self._reached for u in urls):
                kind = errors.RemoteTimeoutError if stalled else errors.RemoteError
                raise kind(f"{what}: gave up after {o.retries + 1} attempts: {last}", url=clean_url(url))
            log.info("%s: every endpoint failed (%s); trying again until the deadline", what, last)
            if deadline - loop.time() <= 0:
                raise gave_up()
            await pause(retry_after)
        raise AssertionError("unreachable")

    # -- building blocks for callers

    def check_status(self, resp: aiohttp.ClientResponse, what: str, ok: Sequence[int] = (200,)) -> None:
        """Raise the right error for an unexpected status (``Retry`` for transient ones)."""
        status = resp.status
        if status in ok:
            return
        url = clean_url(str(resp.url))
        if status in _RETRY_STATUS:
            raise Retry(f"{status} {_reason(status)} from {url}", _retry_after(resp.headers.get("Retry-After")))
        if status == 404:
            raise errors.NotFoundError(f"{what}: not found ({url})", status=status, url=url)
        if status in (401, 403):
            raise errors.AuthError(f"{what}: {status} {_reason(status)} from {url}", status=status, url=url)
        raise errors.RemoteError(f"{what}: unexpected {status} {_reason(status)} from {url}", status=status, url=url)

    async def fetch_range(self, urls: Sequence[str], offset: int, size: int, *, auth: Authorizer | None = None,
                          digest: str | None = None, what: str = "range", into: Any = None,
                          total: int | None = None, progress: Callable[[Any, int], None] | None = None) -> Any:
        """Exactly ``size`` bytes at ``offset``, checked against ``digest`` when given.

        The bytes land in ``into`` (a writable buffer of ``size`` bytes) or in a
        new bytearray, which grows as bytes arrive (a size nobody has checked
        never sizes an allocation); that buffer is returned.  Each chunk is
        copied once, from the socket's buffer to its place.  ``total``: the
        blob's size as declared (a descriptor's); a server whose answer says
        otherwise raises :class:`~lazylayer.errors.IntegrityError` naming both.
        ``progress(buffer, n)``, on the loop's thread, whenever the first ``n``
        bytes are in (unchecked: ``digest`` is checked at the end; a retry
        after a wrong answer may write over bytes reported before).
        """
        if into is not None:
            fill = _Fill(memoryview(into).cast("B"))
            if len(fill.view) != size:
                raise ValueError(f"the buffer holds {len(fill.view)} bytes, not {size}")
        else:
            fill = _Fill(bytearray())
        mismatches = 0

        async def attempt(url: str) -> Any:
            nonlocal mismatches
            if fill.n < size:
                await self._read_range(url, offset + fill.n, size - fill.n, fill, auth, what, total, progress)
            if digest is not None and sha256_of(fill.view) != digest:
                fill.n = 0
                mismatches += 1
                self.stats.digest_mismatches += 1
                if mismatches > 2:
                    raise errors.IntegrityError(f"{what}: bytes {offset}-{offset + size - 1} do not match "
                                                f"their digest {digest} ({mismatches} attempts)")
                raise Retry(f"bytes {offset}-{offset + size - 1} do not match their digest")
            return fill.view.obj if isinstance(fill.view, memoryview) else fill.view

        return await self.call(urls, attempt, f"{what} [{offset}, +{size}]")

    async def _read_range(self, url: str, pos: int, want: int, fill: _Fill, auth: Authorizer | None,
                          what: str, total: int | None = None,
                          progress: Callable[[Any, int], None] | None = None) -> None:
        """Put the bytes [pos, pos+want) in ``fill``; a short body raises ``Retry`` with what came kept."""
        headers = {"Range": f"bytes={pos}-{pos + want - 1}", "Accept-Encoding": "identity"}
        start = fill.n
        goal = start + want
        with network_retry():
            async with self.open("GET", url, headers=headers, auth=auth) as resp:
                if resp.status == 416:
                    _check_total(resp.headers.get("Content-Range"), total, what, url)
                    raise errors.RemoteError(f"{what}: bytes {pos}-{pos + want - 1} are past the end of "
                                             f"{clean_url(url)} ({resp.headers.get('Content-Range', '?')})",
                                             status=416, url=clean_url(url))
                self.check_status(resp, what, ok=(200, 206))
                skip = 0
                if resp.status == 206:
                    _check_total(resp.headers.get("Content-Range"), total, what, url)
                    _check_content_range(resp.headers.get("Content-Range"), pos, want, url)
                    length = resp.headers.get("Content-Length")
                    if length is not None and length.isdigit() and int(length) != want:
                        raise Retry(f"Content-Length {length} for a range of {want} bytes")
                else:  # 200: the server ignored Range; stream to the bytes we want
                    length = resp.headers.get("Content-Length")
                    if total is not None and length is not None and length.isdigit() and int(length) != total:
                        raise _size_mismatch(what, url, int(length), total)
                    skip = pos
                view = fill.view
                async for chunk in resp.content.iter_any():
                    self.stats.bytes += len(chunk)
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    n = fill.n
                    room = goal - n
                    if len(chunk) > room and resp.status == 206:
                        fill.n = start
                        raise Retry(f"more than the {want} bytes asked for")
                    take = min(len(chunk), room)
                    view[n:n + take] = chunk[:take] if take < len(chunk) else chunk
                    fill.n = n + take
                    if progress is not None:
                        progress(view, fill.n)
                    if fill.n == goal and resp.status == 200:
                        return  # the rest of the body is not needed; release() drops the connection
                if fill.n < goal:
                    raise Retry(f"short body: {fill.n - start} of {want} bytes")

    async def head_size(self, urls: Sequence[str], *, auth: Authorizer | None = None, what: str = "blob") -> int:
        """A blob's size, from ``HEAD`` (or a one-byte range GET if HEAD gives no length)."""

        async def attempt(url: str) -> int:
            with network_retry():
                async with self.open("HEAD", url, auth=auth) as resp:
                    self.check_status(resp, what)
                    length = resp.headers.get("Content-Length")
                    if length is not None and length.isdigit():
                        return int(length)
                async with self.open("GET", url, headers={"Range": "bytes=0-0"}, auth=auth) as resp:
                    self.check_status(resp, what, ok=(200, 206))
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if m and m.group(3) != "*":
                        return int(m.group(3))
            raise errors.RemoteError(f"{what}: {clean_url(url)} does not say its size")

        return await self.call(urls, attempt, what)


class _Fill:
    """A buffer being filled by a ranged GET (``n`` bytes so far), kept across retries."""

    __slots__ = ("view", "n")

    def __init__(self, view: memoryview | bytearray) -> None:
        self.view = view
        self.n = 0


def _base(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _size_mismatch(what: str, url: str, real: int, declared: int) -> errors.IntegrityError:
    return errors.IntegrityError(f"{what}: {clean_url(url)} has {real} bytes, but its descriptor declares "
                                 f"{declared}: refusing to read by the declared size")


def _check_total(header: str | None, total: int | None, what: str, url: str) -> None:
    """The total of a ``Content-Range`` (``bytes A-B/TOTAL`` or ``bytes */TOTAL``) must be the declared size."""
    if total is None or not header:
        return
    m = re.match(r"^bytes (?:\d+-\d+|\*)/(\d+)$", header.strip())
    if m and int(m.group(1)) != total:
        raise _size_mismatch(what, url, int(m.group(1)), total)


def _check_content_range(header: str | None, pos: int, want: int, url: str) -> None:
    m = _CONTENT_RANGE.match(header or "")
    if not m or int(m.group(1)) != pos or int(m.group(2)) != pos + want - 1:
        raise Retry(f"{clean_url(url)} answered Content-Range {header!r} for bytes {pos}-{pos + want - 1}")


_default: Transport | None = None
_default_lock = threading.Lock()


def default_transport() -> Transport:
    """The transport shared by blobs and registries that are not given one."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Transport()
        return _default


_exiting = False


def exiting() -> bool:
    """True once the interpreter is exiting (the default transport's atexit hook ran, or finalization began).

    Background work (prefetch) cut short then is not a failure worth a warning.
    """
    return _exiting or sys.is_finalizing()


def _close_default() -> None:
    global _exiting
    _exiting = True
    if _default is not None:
        _default.close()


atexit.register(_close_default)


def _after_fork_in_child() -> None:
    global _default, _default_lock
    _default_lock = threading.Lock()
    _default = None  # the parent's loop thread does not exist here; never touch its objects


os.register_at_fork(after_in_child=_after_fork_in_child)
