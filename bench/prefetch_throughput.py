"""Benchmark: `glowplug-worker prefetch` against curl (one stream) and huggingface_hub-style
single-file downloads (one stream per file, 8 files at a time, through huggingface_hub's own
`http_get`), all served by nginx from the same files in the same run.

Two server settings:
  (a) per-connection cap: nginx `limit_rate` (40 MiB/s by default, like an object store's
      per-connection cap) plus kernel pacing of each connection at the same rate (see Server),
      and `limit_conn` 16, so the server allows 16 x 40 MiB/s in aggregate; targets: prefetch
      >= 8x curl and >= 90% of that aggregate.
  (b) no cap, loopback: target prefetch >= 0.9x curl.
Plus the prefetch command's start-up time to its first request (target < 0.3 s).

    uv run python bench/prefetch_throughput.py [--total-mib 2048] [--file-mib 512]

Prints a table and writes it to bench/results/prefetch_throughput.md. Needs nginx and curl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prefetch_throughput.md"
WORKER = Path(sys.executable).with_name("glowplug-worker")

CONF = """
user root;
worker_processes 2;
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  default_type application/octet-stream;
  log_format t '$msec $request_time $request_uri $status $body_bytes_sent';
  access_log {run}/access.log t;
  client_body_temp_path {run}/body; proxy_temp_path {run}/proxy;
  fastcgi_temp_path {run}/fastcgi; uwsgi_temp_path {run}/uwsgi; scgi_temp_path {run}/scgi;
  sendfile on; tcp_nopush on; keepalive_requests 100000;
  limit_conn_zone $binary_remote_addr zone=perip:1m;
  server {{
    listen 127.0.0.1:{capped_port};
    root {root};
    limit_rate {rate};
    limit_conn perip {conns};
  }}
  server {{
    listen 127.0.0.1:{open_port};
    root {root};
  }}
}}
"""
SO_MAX_PACING_RATE = 47  # Linux: cap one socket's send rate, inherited by accepted sockets


def _listener(pacing_bytes_per_s: int | None) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if pacing_bytes_per_s:
        s.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, pacing_bytes_per_s)
    s.bind(("127.0.0.1", 0))
    s.listen(511)
    s.set_inheritable(True)
    return s


class Server:
    """nginx with two listeners: `capped` (limit_rate, limit_conn, and each connection paced by
    the kernel at the same rate) and `open` (no limit).

    Why the kernel pacing: nginx's limit_rate grants every *request* a one-second allowance at its
    start (ngx_http_write_filter: rate * (now - start + 1)), so a client splitting a file into
    range requests gets bursts that an object store's per-connection cap would not give. The
    listening socket carries SO_MAX_PACING_RATE, which every accepted connection inherits, and is
    handed to nginx the way nginx hands sockets to a new binary (the NGINX environment variable).
    """

    def __init__(self, root: Path, run: Path, rate_mib: int, conns: int) -> None:
        self.run = run
        run.mkdir(parents=True, exist_ok=True)
        self._socks = [_listener(rate_mib * MIB), _listener(None)]
        capped, open_ = (s.getsockname()[1] for s in self._socks)
        conf = CONF.format(
            run=run,
            capped_port=capped,
            open_port=open_,
            root=root,
            rate=f"{rate_mib}m",
            conns=conns,
        )
        (run / "nginx.conf").write_text(conf)
        fds = [s.fileno() for s in self._socks]
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(run / "nginx.conf"), "-p", str(run), "-e", str(run / "error.log")],
            env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},
            pass_fds=fds,
        )
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", open_), 0.2).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)
        self.capped_url = f"http://127.0.0.1:{capped}"
        self.url = f"http://127.0.0.1:{open_}"

    def first_request_start(self, uri_suffix: str, after: float) -> float:
        """Wall-clock start of the first request for uri_suffix logged after `after`."""
        for line in (self.run / "access.log").read_text().splitlines():
            msec, rt, uri, *_ = line.split()
            start = float(msec) - float(rt)
            if uri.endswith(uri_suffix) and float(msec) >= after:
                return start
        raise RuntimeError(f"no request for {uri_suffix} in the access log")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        for s in self._socks:
            s.close()


def make_files(root: Path, total_mib: int, file_mib: int) -> list[dict[str, object]]:
    """Random safetensors-sized shards (distinct contents) and their manifest entries."""
    block = os.urandom(16 * MIB)
    entries = []
    n = max(1, total_mib // file_mib)
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        h = hashlib.sha256()
        with open(root / name, "wb") as fh:
            for j in range(file_mib // 16):
                piece = (i * 1000 + j).to_bytes(8, "little") + block[8:]
                fh.write(piece)
                h.update(piece)
        entries.append({"path": name, "size": file_mib * MIB, "sha256": h.hexdigest()})
    manifest = {
        "schema": "glowplug.dev/prefetch-manifest/v1",
        "revision": "bench",
        "files": entries,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    for p in root.iterdir():
        p.chmod(0o644)
    # Read once so that every tool is served from the page cache.
    for e in entries:
        with open(root / str(e["path"]), "rb") as fh:
            while fh.read(64 * MIB):
                pass
    return entries


def run_curl(base: str, names: list[str], dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in names:  # one stream, file after file
        subprocess.run(
            ["curl", "-sS", "--fail", "-o", str(dest / name), f"{base}/{name}"], check=True
        )


HF_STYLE = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
from huggingface_hub.file_download import http_get
base, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def one(name):
    with open(os.path.join(dest, name), "wb") as fh:
        http_get(f"{base}/{name}", fh, displayed_filename=name)
with ThreadPoolExecutor(8) as pool:  # snapshot_download's default max_workers
    list(pool.map(one, names))
"""


def run_hf_style(base: str, names: list[str], dest: Path) -> None:
    """In a child process, so that its keep-alive connections close when it is done and do not
    count against the next tool's limit_conn."""
    dest.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    subprocess.run([sys.executable, "-c", HF_STYLE, base, str(dest), *names], check=True, env=env)


def run_prefetch(base: str, dest: Path, concurrency: int) -> None:
    env = {**os.environ, "GLOWPLUG_TERMINATION_PATH": str(dest.parent / "report.json")}
    subprocess.run(
        [
            str(WORKER),
            "prefetch",
            "--source",
            f"{base}/manifest.json",
            "--dest",
            str(dest),
            "--concurrency",
            str(concurrency),
            "--progress-interval",
            "0",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _cpu() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: object, dest: Path, *args: object) -> tuple[float, float]:
    """(wall seconds, client CPU seconds) of one download into a fresh dest."""
    shutil.rmtree(dest, ignore_errors=True)
    for leftover in dest.parent.glob(dest.name + ".glowplug-*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    subprocess.run(["sync"], check=False)  # no earlier run's dirty pages in this one's time
    c, t = _cpu(), time.perf_counter()
    fn(*args)  # type: ignore[operator]
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    shutil.rmtree(dest, ignore_errors=True)
    return seconds, cpu


def startup_time(server: Server, work: Path, runs: int) -> float:
    """Seconds from exec of glowplug-worker to nginx starting its first request (median)."""
    small = work / "www" / "tiny"
    small.mkdir(exist_ok=True)
    (small / "w.bin").write_bytes(b"x" * 1000)
    entry = {"path": "w.bin", "size": 1000, "sha256": hashlib.sha256(b"x" * 1000).hexdigest()}
    (small / "manifest.json").write_text(
        json.dumps({"schema": "glowplug.dev/prefetch-manifest/v1", "files": [entry]})
    )
    for p in (small, *small.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    times = []
    for i in range(runs):
        dest = work / f"startup-{i}"
        t0 = time.time()
        run_prefetch(f"{server.url}/tiny", dest, 4)
        times.append(server.first_request_start("/tiny/manifest.json", t0) - t0)
        shutil.rmtree(dest)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total-mib", type=int, default=2048)
    ap.add_argument("--file-mib", type=int, default=512)
    ap.add_argument("--rate-mib", type=int, default=40, help="per-connection cap in (a)")
    ap.add_argument("--conns", type=int, default=16, help="connections nginx allows per client")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool in (b)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    for tool in ("nginx", "curl"):
        if not shutil.which(tool):
            print(f"bench: {tool} is required (apt-get install -y nginx-light curl)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="prefetch-bench-", dir=args.workdir))
    work.chmod(0o755)
    try:
        (work / "www").mkdir()
        print(f"making {args.total_mib} MiB of shards in {work} ...", flush=True)
        entries = make_files(work / "www", args.total_mib, args.file_mib)
        names = [str(e["path"]) for e in entries]
        total = sum(int(e["size"]) for e in entries)  # type: ignore[call-overload]
        server = Server(work / "www", work / "run", args.rate_mib, args.conns)
        rows: list[tuple[str, dict[str, tuple[float, float]]]] = []
        try:
            dest = work / "out" / "model"
            dest.parent.mkdir()
            tools = {
                "curl (1 stream)": lambda base: timed(run_curl, dest, base, names, dest),
                "hf_hub http_get (1 stream/file)": lambda base: timed(
                    run_hf_style, dest, base, names, dest
                ),
                "glowplug-worker prefetch": lambda base: timed(
                    run_prefetch, dest, base, dest, args.conns
                ),
            }
            for label, base, repeat in (
                ("a: capped", server.capped_url, 1),
                ("b: loopback", server.url, args.repeat),
            ):
                runs: dict[str, list[tuple[float, float]]] = {tool: [] for tool in tools}
                for _ in range(repeat):  # interleaved, so load changes hit every tool alike
                    for tool, fn in tools.items():
                        runs[tool].append(fn(base))
                # The median run by wall time, with its CPU.
                results = {tool: sorted(r)[len(r) // 2] for tool, r in runs.items()}
                rows.append((label, results))
                print(label, {k: f"{v[0]:.1f}s" for k, v in results.items()}, flush=True)
            startup = startup_time(server, work, 5)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    allowed = args.conns * args.rate_mib * MIB
    lines = [
        f"# prefetch throughput ({total / MIB:.0f} MiB in {len(names)} files, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f})",
        "",
        "| server | tool | seconds | MiB/s | vs curl | vs allowed aggregate "
        "| client CPU s/GiB | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, results in rows:
        capped = label.startswith("a")
        t_curl = results["curl (1 stream)"][0]
        for tool, (t, cpu) in results.items():
            rate = total / t
            agg = f"{100 * rate / allowed:.0f}%" if capped else "-"
            target = ""
            if tool.startswith("glowplug"):
                target = ">= 8x curl, >= 90% allowed" if capped else ">= 0.9x curl"
                ok = (t_curl / t >= 8 and rate >= 0.9 * allowed) if capped else t_curl / t >= 0.9
                target += " " + ("MET" if ok else "MISSED")
            lines.append(
                f"| {label} | {tool} | {t:.2f} | {rate / MIB:.0f} | {t_curl / t:.2f}x | {agg} "
                f"| {cpu / (total / 1024**3):.2f} | {target} |"
            )
    lines += [
        "",
        f"(a) nginx limit_rate {args.rate_mib} MiB/s and every connection paced by the kernel at "
        f"{args.rate_mib} MiB/s (SO_MAX_PACING_RATE), limit_conn {args.conns}: "
        f"allowed aggregate {allowed / MIB:.0f} MiB/s, one run each. (b) no limit, loopback, "
        f"median of {args.repeat} interleaved runs.",
        "prefetch verifies the sha256 of every file and fsyncs before publishing; curl and "
        "http_get do neither. Client CPU excludes nginx and the kernel's writeback.",
        "",
        f"start-up, exec of glowplug-worker prefetch to its first request (median of 5): "
        f"{startup:.3f} s (target < 0.3 s: {'MET' if startup < 0.3 else 'MISSED'})",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
