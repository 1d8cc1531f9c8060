"""A fault-injecting HTTP proxy in front of kube-apiserver, for any client.

It listens on plain HTTP on loopback and forwards to the API server with the kubeconfig's own
credentials (client certificate or bearer token), so a client needs only a kubeconfig whose
server is the proxy (`kubeconfig()` writes one). Each request is, with probability `rate`,
answered with a fault instead: 409 Conflict on writes, 429 with Retry-After, 500, 503, a delay
before forwarding (a slow API server), or a reset connection; a watch is cut after a random
few seconds, or answered with a 410 Gone ERROR event (what an expired resourceVersion gets).
Nothing about the client is assumed: lightkube, kopf and the `kubernetes` client alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import ssl
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

FAULTS = ("409", "429", "500", "503", "slow", "reset")
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


def _material(entry: dict[str, Any], key: str, tmp: Path) -> str | None:
    """A kubeconfig file field, or its -data twin written to a file."""
    if entry.get(key):
        return str(entry[key])
    data = entry.get(f"{key}-data")
    if not data:
        return None
    path = tmp / key
    path.write_bytes(base64.b64decode(data))
    return str(path)


class FaultProxy:
    def __init__(self, kubeconfig: str, rate: float = 0.15, seed: int = 0) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        context = next(
            c["context"] for c in config["contexts"] if c["name"] == config["current-context"]
        )
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.upstream = cluster["server"].rstrip("/")
        self._tmp = tempfile.TemporaryDirectory()
        tmp = Path(self._tmp.name)
        self.ssl = ssl.create_default_context(
            cafile=_material(cluster, "certificate-authority", tmp)
        )
        cert, key = _material(user, "client-certificate", tmp), _material(user, "client-key", tmp)
        if cert and key:
            self.ssl.load_cert_chain(cert, key)
        self.token = user.get("token")
        self.rate = rate
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def stop() -> None:
            if self._runner:
                await self._runner.cleanup()
            if self._session:
                await self._session.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:  # watches still being forwarded
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._tmp.cleanup()

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def kubeconfig(self, path: Path) -> str:
        """A kubeconfig for the proxy: plain HTTP to loopback, no credentials."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "proxy", "user": {}}],
                    "contexts": [
                        {"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}
                    ],
                    "current-context": "proxy",
                }
            )
        )
        return str(path)

    # -- requests -------------------------------------------------------------------------------
    def _fault(self, request: web.Request, watch: bool) -> str | None:
        # Watches are few and long: they get three times the rate, or a test sees none cut.
        if self.random.random() >= (min(1.0, 3 * self.rate) if watch else self.rate):
            return None
        if watch:
            return self.random.choice(["cut", "410", "500", "429"])
        choices = [f for f in FAULTS if f != "409" or request.method in ("POST", "PUT", "PATCH")]
        return self.random.choice(choices)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._forward(request)
        except (ConnectionError, aiohttp.ClientError, asyncio.CancelledError):
            # The client went away (or was cut): nothing to answer.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "1")
        fault = self._fault(request, watch)
        if fault is not None:
            self.injected[f"{'watch ' if watch else ''}{fault}"] += 1
        if fault in ("409", "429", "500", "503") and not watch:
            return _status(int(fault))
        if fault in ("429", "500") and watch:
            return _status(int(fault))
        if fault == "slow":
            await asyncio.sleep(self.random.uniform(1.0, 4.0))
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = await request.read()
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None if watch else 120)
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=timeout,
        ) as upstream:
            self.forwarded += 1
            response = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP:
                    response.headers[k] = v
            await response.prepare(request)
            if fault == "410":
                gone = {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "Expired",
                        "code": 410,
                        "message": "too old resource version (fault proxy)",
                    },
                }
                await response.write(json.dumps(gone).encode() + b"\n")
                return response
            cut_after = self.random.uniform(0.5, 5.0) if fault == "cut" else None
            loop = asyncio.get_running_loop()
            started = loop.time()
            while True:
                left = None if cut_after is None else cut_after - (loop.time() - started)
                if left is not None and left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), left)
                except TimeoutError:
                    break
                if not chunk:
                    break
                await response.write(chunk)
            if cut_after is not None:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write_eof()
            return response


def _status(code: int) -> web.Response:
    reasons = {
        409: "Conflict",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
    }
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"injected by the fault proxy ({code})",
        "reason": reasons[code],
        "code": code,
    }
    headers = {"Retry-After": "1"} if code in (429, 503) else {}
    return web.json_response(body, status=code, headers=headers)
