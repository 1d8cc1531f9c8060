"""https:// through nginx with TLS: the path production weights take (no splice through TLS)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.prefetch.conftest import (
    assert_nothing_published,
    assert_published,
    make_model,
    run_prefetch,
)
from tests.prefetch.servers import Nginx, free_port

MB = 1024 * 1024


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, int, Path, Path]]:
    """nginx with an https listener using a fresh self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    d.chmod(0o755)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    root = d / "www"
    root.mkdir()
    root.chmod(0o755)
    port = free_port()
    server = Nginx(
        root,
        d / "run",
        http_extra=(
            f"server {{ listen 127.0.0.1:{port} ssl; root {root}; "
            f"ssl_certificate {cert}; ssl_certificate_key {key}; }}"
        ),
    )
    yield server, port, root, cert
    server.stop()


def test_https_manifest_download_in_ranges(
    tls: tuple[Nginx, int, Path, Path], tmp_path: Path
) -> None:
    server, port, root, cert = tls
    model = make_model(root, "m", {"a.safetensors": 3 * MB + 1, "b.json": 10}, seed=40)
    dest = tmp_path / "d"
    args = ["--source", f"https://127.0.0.1:{port}/m/manifest.json", "--dest", str(dest)]
    res = run_prefetch([*args, "--chunk-mib", "1"], tmp_path, env={"SSL_CERT_FILE": str(cert)})
    assert res.rc == 0, res.stderr
    assert_published(dest, model)
    ranged = [r for r in server.access_log() if r[0] == "/m/a.safetensors" and r[1] == 206]
    assert len(ranged) >= 4


def test_untrusted_certificate_is_a_clear_error(
    tls: tuple[Nginx, int, Path, Path], tmp_path: Path
) -> None:
    _, port, root, _ = tls
    make_model(root, "u", {"a.bin": 100}, seed=41)
    dest = tmp_path / "d"
    res = run_prefetch(
        ["--source", f"https://127.0.0.1:{port}/u/manifest.json", "--dest", str(dest)],
        tmp_path,
        env={"SSL_CERT_FILE": "/nonexistent"},
    )
    assert res.rc == 9, res.stderr
    assert "TLS certificate is not trusted" in res.stderr and "SSL_CERT_FILE" in res.stderr
    assert "retrying" not in res.stderr
    assert_nothing_published(dest)
