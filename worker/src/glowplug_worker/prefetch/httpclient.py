"""A small HTTP/1.1 client for byte-range downloads: keep-alive per thread, redirects, proxies
(HTTP_PROXY, HTTPS_PROXY, NO_PROXY, as curl reads them), and status codes mapped to the
prefetcher's errors. Standard library only, so it starts fast."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import os
import select
import socket
import ssl  # already imported by http.client
import threading
from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from glowplug_worker.prefetch.errors import (
    CredentialsError,
    NoSpaceError,
    NotFoundError,
    PrefetchError,
    SourceError,
    TransientError,
)

MAX_REDIRECTS = 8
SPLICE = hasattr(os, "splice")
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1024 * 1024
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def redact(url: str) -> str:
    """Drop the query string (signed URLs carry credentials there) for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")


class HttpStream:
    """A response body; a connection whose body was not fully read is closed, not reused."""

    def __init__(self, client: HttpClient, key: tuple[str, str], resp: http.client.HTTPResponse):
        self._client, self._key, self.resp = client, key, resp
        self._drained = False  # http.client's read-ahead buffer emptied (splice may start)

    def readinto(self, buf: memoryview) -> int:
        try:
            return self.resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            self._client.discard(self._key)
            raise TransientError(
                f"connection failed mid-body: {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def can_splice(self) -> bool:
        """Plain HTTP with a Content-Length: the body can go socket -> pipe -> file in the
        kernel, without passing through Python (TLS bodies cannot)."""
        return (
            SPLICE
            and self._key[0] == "http"
            and not self.resp.chunked
            and self.resp.length is not None
            and self._client.socket(self._key) is not None
        )

    def splice_into(self, fd: int, pos: int, count: int) -> int:
        """Move up to `count` body bytes to `fd` at `pos`; returns how many (0: body ended)."""
        resp = self.resp
        count = min(count, resp.length or 0)
        if count <= 0:
            return 0
        try:
            if not self._drained:
                # Bytes http.client already read past the headers come first, through Python.
                fp = resp.fp
                ahead = fp.peek(1) if fp is not None else b""
                take = min(len(ahead), count)
                data = resp.read(take) if take else b""
                self._drained = take == len(ahead)
                if data:
                    write_all(fd, data, pos)
                return len(data)
            return self._client.splice(self._key, fd, pos, count, resp)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError("no space left on the destination volume") from exc
            self._client.discard(self._key)
            raise TransientError(
                f"connection failed mid-body: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        if self.resp.length == 0 and not self.resp.isclosed():
            self.resp.read()  # everything spliced: marks the response done, keeps the connection
        if not self.resp.isclosed():
            self._client.discard(self._key)
        self.resp.close()


def write_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def sends_credentials(origin: str, url: str) -> bool:
    """Whether a request to `url`, reached from `origin` by redirects, gets our headers (the
    token): only on the origin's host and port, and never over plain HTTP when the origin was
    HTTPS (a downgrade would put the token on the wire in clear)."""
    first, now = urlsplit(origin), urlsplit(url)
    if now.netloc != first.netloc:
        return False  # signed CDN URLs must not receive our token
    return not (first.scheme == "https" and now.scheme != "https")


@dataclass(frozen=True)
class Proxies:
    """The proxy settings of the environment: HTTP_PROXY, HTTPS_PROXY, NO_PROXY (lowercase
    names win, as in curl; NO_PROXY holds hosts, domain suffixes, or `*`)."""

    http: str | None = None
    https: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Proxies:
        def get(name: str) -> str | None:
            return env.get(name.lower()) or env.get(name.upper()) or None

        raw = get("no_proxy") or ""
        return cls(
            http=get("http_proxy"),
            https=get("https_proxy"),
            no_proxy=tuple(h.strip().lower() for h in raw.split(",") if h.strip()),
        )

    def for_url(self, scheme: str, host: str) -> str | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None:
            return None
        host = host.lower().strip("[]")
        for entry in self.no_proxy:
            if entry == "*":
                return None
            entry = entry.lstrip(".").split(":")[0] if entry.count(":") == 1 else entry.lstrip(".")
            if host == entry or host.endswith("." + entry):
                return None
        return proxy if "://" in proxy else f"http://{proxy}"


class HttpClient:
    """One keep-alive connection per (thread, host). `headers` go to the first host only unless
    a redirect stays on it (`sends_credentials`). Connections go through the proxy the
    environment names for the scheme, unless NO_PROXY lists the host."""

    def __init__(
        self,
        headers: dict[str, str] | None,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.proxies = Proxies.from_env(os.environ if env is None else env)
        self._local = threading.local()
        self._pipes: set[tuple[int, int]] = set()
        self._pipes_lock = threading.Lock()

    def _pool(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        return pool

    def discard(self, key: tuple[str, str]) -> None:
        conn = self._pool().pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's connections and every thread's pipe (call when all are done)."""
        for key in list(self._pool()):
            self.discard(key)
        with self._pipes_lock:
            pipes, self._pipes = self._pipes, set()
        for pipe in pipes:
            for end in pipe:
                os.close(end)

    def socket(self, key: tuple[str, str]) -> socket.socket | None:
        conn = self._pool().get(key)
        return conn.sock if conn is not None else None

    def _pipe(self) -> tuple[int, int]:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            r, w = os.pipe()
            with contextlib.suppress(OSError):  # a bigger pipe moves more per system call
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
            pipe = self._local.pipe = (r, w)
            with self._pipes_lock:
                self._pipes.add(pipe)
        return pipe

    def _drop_pipe(self) -> None:
        pipe = getattr(self._local, "pipe", None)
        self._local.pipe = None
        if pipe is not None:
            with self._pipes_lock:
                self._pipes.discard(pipe)
            for end in pipe:
                os.close(end)

    def splice(
        self, key: tuple[str, str], fd: int, pos: int, count: int, resp: http.client.HTTPResponse
    ) -> int:
        """socket -> pipe -> fd at pos, up to count bytes, waiting at most `timeout` for data."""
        sock = self.socket(key)
        if sock is None:
            raise TransientError("connection closed mid-body")
        r, w = self._pipe()
        sfd = sock.fileno()
        while True:
            try:
                n = os.splice(sfd, w, min(count, PIPE_BYTES), flags=SPLICE_FLAGS)
                break
            except BlockingIOError:
                poller = select.poll()
                poller.register(sfd, select.POLLIN)
                if not poller.poll(self.timeout * 1000):
                    raise TransientError(
                        f"no data for {self.timeout:g}s (stalled connection); timed out"
                    ) from None
        if n == 0:
            raise TransientError("the server closed the connection mid-body")
        moved = 0
        try:
            while moved < n:
                moved += os.splice(r, fd, n - moved, offset_dst=pos + moved)
        except BaseException:
            self._drop_pipe()  # it may still hold bytes: never reuse it
            raise
        if resp.length is not None:
            resp.length -= n
        return n

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        pool = self._pool()
        conn = pool.get(key)
        if conn is None:
            proxy = self.proxies.for_url(scheme, urlsplit(f"//{netloc}").hostname or netloc)
            if proxy is None:
                cls = (
                    http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
                )
                conn = cls(netloc, timeout=self.timeout)
            else:
                conn = self._via_proxy(scheme, netloc, proxy)
            pool[key] = conn
        return conn

    def _via_proxy(self, scheme: str, netloc: str, proxy: str) -> http.client.HTTPConnection:
        """https: a CONNECT tunnel through the proxy, TLS end to end; http: requests in absolute
        form to the proxy (`_proxied` marks the connection)."""
        parts = urlsplit(proxy)
        address = f"{parts.hostname}:{parts.port or 80}"
        auth: dict[str, str] = {}
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth["Proxy-Authorization"] = "Basic " + b64encode(user.encode()).decode()
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(address, timeout=self.timeout)
            conn.set_tunnel(netloc, headers=auth)
        else:
            conn = http.client.HTTPConnection(address, timeout=self.timeout)
            conn._glowplug_proxy_headers = auth  # type: ignore[attr-defined]
        return conn

    def _proxied(self, key: tuple[str, str]) -> dict[str, str] | None:
        """The Proxy-Authorization headers of a plain-HTTP proxy connection, or None if direct."""
        conn = self._pool().get(key) or self._connection(*key)
        return getattr(conn, "_glowplug_proxy_headers", None)

    def get(self, url: str, extra: dict[str, str] | None = None) -> HttpStream:
        """GET with redirects. 2xx returns the open body; errors raise mapped exceptions."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            key = (parts.scheme, parts.netloc)
            headers = dict(extra or {})
            if sends_credentials(url, current):
                headers.update(self.headers)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            proxy_headers = self._proxied(key)
            if proxy_headers is not None:  # plain HTTP through a proxy: the absolute URL
                target = f"{parts.scheme}://{parts.netloc}{target}"
                headers.update(proxy_headers)
            resp = self._send(key, target, headers, current)
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read()
                if not location:
                    raise SourceError(f"{redact(current)}: HTTP {status} without a Location")
                current = urljoin(current, location)
                continue
            if 200 <= status < 300:
                return HttpStream(self, key, resp)
            body = _short_body(resp)
            self.discard(key)
            raise status_error(status, redact(current), body)
        raise SourceError(f"{redact(url)}: more than {MAX_REDIRECTS} redirects")

    def _send(
        self, key: tuple[str, str], target: str, headers: dict[str, str], url: str
    ) -> http.client.HTTPResponse:
        for attempt in (0, 1):
            conn = self._connection(*key)
            try:
                conn.request("GET", target, headers=headers)
                return conn.getresponse()
            except ssl.SSLCertVerificationError as exc:
                self.discard(key)
                raise SourceError(
                    f"{redact(url)}: the server's TLS certificate is not trusted "
                    f"({exc.verify_message}); add its CA to the image or point SSL_CERT_FILE at "
                    "a bundle that has it"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.discard(key)
                # A kept-alive connection the server closed: retry once on a fresh one.
                reused_dead = isinstance(
                    exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                )
                if attempt == 0 and reused_dead:
                    continue
                raise TransientError(f"{redact(url)}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")


def _short_body(resp: http.client.HTTPResponse) -> str:
    try:
        text = resp.read(512).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    if "<html" in text.lower():
        return ""  # an error page says no more than the status
    return " ".join(text.split())[:200]


def status_error(status: int, url: str, body: str = "") -> PrefetchError:
    detail = f": {body}" if body else ""
    if status in (401, 403):
        return CredentialsError(
            f"{url}: HTTP {status}, the credentials were refused; check the token/secret "
            f"(HF_TOKEN, AWS_* or the URL's signature){detail}"
        )
    if status in (404, 410):
        return NotFoundError(f"{url}: HTTP {status}, not found; check the URL/model/revision")
    if status in RETRY_STATUSES:
        return TransientError(f"{url}: HTTP {status}{detail}")
    return SourceError(f"{url}: unexpected HTTP {status}{detail}")
