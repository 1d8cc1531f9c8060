"""A small HTTP/1.1 client for byte-range downloads: keep-alive per thread, redirects, and
status codes mapped to the prefetcher's errors. Standard library only, so it starts fast."""

from __future__ import annotations

import http.client
import threading
from urllib.parse import urljoin, urlsplit

from glowplug_worker.prefetch.errors import (
    CredentialsError,
    NotFoundError,
    PrefetchError,
    SourceError,
    TransientError,
)

MAX_REDIRECTS = 8
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def redact(url: str) -> str:
    """Drop the query string (signed URLs carry credentials there) for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")


class HttpStream:
    """A response body; a connection whose body was not fully read is closed, not reused."""

    def __init__(self, client: HttpClient, key: tuple[str, str], resp: http.client.HTTPResponse):
        self._client, self._key, self.resp = client, key, resp

    def readinto(self, buf: memoryview) -> int:
        try:
            return self.resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            self._client.discard(self._key)
            raise TransientError(
                f"connection failed mid-body: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        if not self.resp.isclosed():
            self._client.discard(self._key)
        self.resp.close()


class HttpClient:
    """One keep-alive connection per (thread, host). `headers` go to the first host only unless
    a redirect stays on the same host (signed CDN URLs must not receive our token)."""

    def __init__(self, headers: dict[str, str] | None, timeout: float) -> None:
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._local = threading.local()

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
        for key in list(self._pool()):
            self.discard(key)

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        pool = self._pool()
        conn = pool.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=self.timeout)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            pool[key] = conn
        return conn

    def get(self, url: str, extra: dict[str, str] | None = None) -> HttpStream:
        """GET with redirects. 2xx returns the open body; errors raise mapped exceptions."""
        origin = urlsplit(url).netloc
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            key = (parts.scheme, parts.netloc)
            headers = dict(extra or {})
            if parts.netloc == origin:
                headers.update(self.headers)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
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
