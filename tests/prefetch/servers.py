"""Real servers for the prefetch tests: nginx from apt (byte ranges, limit_rate) and a TCP proxy
that injects faults a real network has (5xx, connections cut or truncated mid-body, stalls)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline_s: float = 10.0, host: str = "127.0.0.1") -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline_s}s")


NGINX_CONF = """
user root;
worker_processes {workers};
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  default_type application/octet-stream;
  log_format glow '$request_uri $status $body_bytes_sent "$http_range"';
  access_log {run}/access.log glow;
  client_body_temp_path {run}/body;
  proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi;
  uwsgi_temp_path {run}/uwsgi;
  scgi_temp_path {run}/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  {http_extra}
  server {{
    listen {host}:{port};
    root {root};
    location = /status/503 {{ return 503; }}
    location = /status/401 {{ return 401; }}
    location = /status/403 {{ return 403; }}
    location /slow/ {{ alias {root}/; limit_rate {rate}; {server_extra} }}
    {locations}
  }}
}}
"""


class Nginx:
    """nginx serving `root` on a free port of `host`. /slow/ is the same tree behind limit_rate."""

    def __init__(
        self,
        root: Path,
        run: Path,
        rate: str = "40m",
        workers: int = 1,
        http_extra: str = "",
        server_extra: str = "",
        locations: str = "",
        host: str = "127.0.0.1",
    ) -> None:
        if not os.path.exists(NGINX):
            raise RuntimeError("the prefetch tests need nginx: apt-get install -y nginx-light")
        self.root, self.run_dir, self.host = root, run, host
        self.port = free_port()
        run.mkdir(parents=True, exist_ok=True)
        conf = NGINX_CONF.format(
            workers=workers,
            run=run,
            host=host,
            port=self.port,
            root=root,
            rate=rate,
            http_extra=http_extra,
            server_extra=server_extra,
            locations=locations,
        )
        (run / "nginx.conf").write_text(conf)
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(run / "nginx.conf"), "-p", str(run), "-e", str(run / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, host=host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def access_log(self) -> list[tuple[str, int, int, str]]:
        """(uri, status, body bytes, range header) per request; nginx writes it per request."""
        rows = []
        path = self.run_dir / "access.log"
        if not path.exists():
            return rows
        for line in path.read_text().splitlines():
            m = re.match(r'^(\S+) (\d+) (\d+) "(.*)"$', line)
            if m:
                rows.append((m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)))
        return rows

    def bytes_sent(self, prefix: str) -> int:
        return sum(b for uri, _, b, _ in self.access_log() if uri.startswith(prefix))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Faults:
    """What the proxy does to the next connections (each fault used up once per connection)."""

    status_503: int = 0  # answer this many requests with 503 ourselves
    cut_after: int | None = None  # reset the connection after this many response bytes...
    cut_times: int = 0  # ...on this many connections
    truncate_after: int | None = None  # close cleanly (FIN) after this many response bytes...
    truncate_times: int = 0
    stall_after: int | None = None  # stop forwarding after this many response bytes...
    stall_times: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> bool:
        with self.lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False


class FaultProxy:
    """A TCP proxy to `upstream_port` injecting Faults into responses."""

    def __init__(self, upstream_port: int, faults: Faults) -> None:
        self.upstream = upstream_port
        self.faults = faults
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stalled = 0
        self.forwarded = 0  # response bytes passed to clients (headers and bodies)
        self.headers = 0  # of which response headers
        self._count = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
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
            self.connections += 1
            self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        f = self.faults
        if f.take("status_503"):
            client.recv(65536)
            body = b"injected 503"
            client.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
            client.close()
            return
        limit, mode = None, ""
        if f.cut_after is not None and f.take("cut_times"):
            limit, mode = f.cut_after, "cut"
        elif f.truncate_after is not None and f.take("truncate_times"):
            limit, mode = f.truncate_after, "truncate"
        elif f.stall_after is not None and f.take("stall_times"):
            limit, mode = f.stall_after, "stall"
        up = socket.create_connection(("127.0.0.1", self.upstream))
        self._conns.append(up)
        threading.Thread(target=self._pipe, args=(client, up), daemon=True).start()
        sent = 0
        try:
            while True:
                data = up.recv(65536)
                if not data:
                    break
                self._count_headers(data)
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[: limit - sent])
                    self._add(limit - sent)
                    if mode == "stall":
                        with self._count:
                            self.stalled += 1
                        self._stop.wait(3600)
                    elif mode == "cut":
                        client.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    break
                client.sendall(data)
                self._add(len(data))
                sent += len(data)
        except OSError:
            pass
        finally:
            # shutdown() wakes the thread blocked in recv() so that close() takes effect now:
            # a FIN (truncate), or a RST when SO_LINGER is 0 (cut).
            for sock, how in (
                (client, socket.SHUT_RD if mode == "cut" else socket.SHUT_RDWR),
                (up, socket.SHUT_RDWR),
            ):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)
                with contextlib.suppress(OSError):
                    sock.close()

    def _add(self, n: int) -> None:
        with self._count:
            self.forwarded += n

    def _count_headers(self, data: bytes) -> None:
        # Good enough for tests: a response head starts a recv() on a keep-alive connection.
        if data.startswith(b"HTTP/1."):
            end = data.find(b"\r\n\r\n")
            with self._count:
                self.headers += end + 4 if end >= 0 else len(data)

    def forwarded_body_bytes(self) -> int:
        with self._count:
            return self.forwarded - self.headers

    def _pipe(self, client: socket.socket, up: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                up.sendall(data)
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.close()


def env_without_proxy() -> dict[str, str]:
    """The test process's environment without proxies and without Hugging Face settings (a
    test sets the HF_* it needs; an outer HF_HUB_OFFLINE=1 would turn online tests offline)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("HF_")
    }
