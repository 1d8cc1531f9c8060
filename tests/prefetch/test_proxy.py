"""The prefetcher's own HTTP client behind a proxy (issue 16, item 11): HTTP_PROXY/HTTPS_PROXY
are used, NO_PROXY is honoured, and a redirect never carries the token to another host or from
https down to http."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest
from glowplug_worker.prefetch.httpclient import Proxies, sends_credentials

from tests.prefetch.conftest import assert_published, make_model, run_prefetch
from tests.prefetch.servers import Nginx, free_port

MB = 1024 * 1024


class ForwardProxy:
    """A real forward proxy, one request per connection: absolute-form GETs are forwarded in
    origin form, CONNECT is tunnelled. It records every request line it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.requests: list[str] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode().split(" ")
            self.requests.append(f"{method} {target}")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up = stack.enter_context(socket.create_connection((host, int(port))))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                without = target.split("://", 1)[1]
                hostport, _, path = without.partition("/")
                host, port = hostport.rsplit(":", 1)
                up = stack.enter_context(socket.create_connection((host, int(port))))
                headers = [
                    h
                    for h in rest.split(b"\r\n")
                    if h and not h.lower().startswith((b"connection:", b"proxy-"))
                ]
                up.sendall(
                    f"{method} /{path} {version}\r\n".encode()
                    + b"\r\n".join([*headers, b"Connection: close"])
                    + b"\r\n\r\n"
                )
            t = threading.Thread(target=self._pipe, args=(client, up), daemon=True)
            t.start()
            self._pipe(up, client)
            t.join(timeout=30)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def proxy() -> ForwardProxy:
    server = ForwardProxy()
    yield server  # type: ignore[misc]
    server.stop()


def test_http_proxy_from_the_environment_is_used(
    nginx: Nginx, nginx_root: Path, tmp_path: Path, proxy: ForwardProxy
) -> None:
    model = make_model(nginx_root, "proxied", {"w.safetensors": 2 * MB + 3, "c.json": 10}, seed=5)
    dest = tmp_path / "d"
    args = ["--source", model.manifest_url(nginx.url), "--dest", str(dest), "--chunk-mib", "1"]
    res = run_prefetch(args, tmp_path, env={"HTTP_PROXY": proxy.url, "NO_PROXY": "example.com"})
    assert res.rc == 0, res.stderr
    assert_published(dest, model)
    seen = [r for r in proxy.requests if "/proxied/" in r]
    assert any(r.startswith(f"GET {nginx.url}/proxied/manifest.json") for r in seen), seen
    assert any("w.safetensors" in r for r in seen)


def test_no_proxy_sends_the_host_direct(
    nginx: Nginx, nginx_root: Path, tmp_path: Path, proxy: ForwardProxy
) -> None:
    model = make_model(nginx_root, "direct", {"w.safetensors": 1000}, seed=6)
    dest = tmp_path / "d"
    env = {"http_proxy": proxy.url, "no_proxy": "localhost,.example.com,127.0.0.1"}
    res = run_prefetch(
        ["--source", model.manifest_url(nginx.url), "--dest", str(dest)], tmp_path, env
    )
    assert res.rc == 0, res.stderr
    assert_published(dest, model)
    assert proxy.requests == []


@pytest.mark.parametrize(
    ("env", "scheme", "host", "expected"),
    [
        ({"HTTPS_PROXY": "proxy:3128"}, "https", "huggingface.co", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://p:1", "https_proxy": "http://q:2"}, "https", "h", "http://q:2"),
        ({"HTTPS_PROXY": "http://p:1"}, "http", "h", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https", "h", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".corp.net"}, "https", "s3.corp.net", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "corp.net"}, "https", "corp.net", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "corp.net"},
            "https",
            "notcorp.net",
            "http://p:1",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "h:443"}, "https", "h", None),
    ],
)
def test_proxy_choice(env: dict[str, str], scheme: str, host: str, expected: str | None) -> None:
    assert Proxies.from_env(env).for_url(scheme, host) == expected


@pytest.mark.parametrize(
    ("origin", "url", "sent"),
    [
        ("https://hub.example/a", "https://hub.example/b", True),
        ("http://models.lan/a", "http://models.lan/b", True),
        ("http://models.lan/a", "https://models.lan/b", True),
        ("https://hub.example/a", "http://hub.example/b", False),  # a downgrade: in clear
        ("https://hub.example/a", "https://cdn.example/b", False),
        ("https://hub.example/a", "https://hub.example:8443/b", False),
    ],
)
def test_token_only_to_the_origin_and_never_in_clear(origin: str, url: str, sent: bool) -> None:
    assert sends_credentials(origin, url) is sent
