"""Secrets never leak (issue 16, prove it): recognisable fake credentials (a Hugging Face token,
an AWS key pair) go into a ModelServer's credentials Secret and into the real prefetcher's
environment. The prefetcher runs for real, failing and succeeding, against a static Hub (nginx)
and an S3 server (moto); its real termination reports then become the termination messages of
kwok pods of ModelServers that use the Secret, while a real operator reconciles them: a failing
prefetch (Degraded), a flag rolled back, a Ready one. Then every place a user or a scraper
reads is scanned for the values: the prefetcher's output and reports, the operator's log, the
namespace's Events, the ModelServers (status included), the children the operator wrote, the
pods' termination messages, and the operator's /metrics. Zero hits."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from glowplug_operator.contract import MODELSERVER_LABEL
from moto.server import ThreadedMotoServer

from tests.cluster import behaviours as b
from tests.cluster.kube import ROOT, Kubectl, wait_until
from tests.cluster.operator import OperatorProcess
from tests.prefetch.conftest import run_prefetch
from tests.prefetch.servers import free_port
from tests.prefetch.test_hf import REPO, hub  # noqa: F401  (the static Hub fixture)

HF_TOKEN = "hf_GlowplugFakeTokenDoNotLeak0123456789abcd"
AWS_KEY = "AKIAGLOWPLUGFAKE0LEAK"
AWS_SECRET = "glowplugFakeSecretKey/DoNotLeak+0123456789abcdef"
SECRETS = {"HF_TOKEN": HF_TOKEN, "AWS_ACCESS_KEY_ID": AWS_KEY, "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
FLAGS = ["prefetch-weights", "fast-load"]


def _hits(text: str) -> list[str]:
    """Each secret, and its base64 form (a Secret's data), found in text."""
    found = []
    for name, value in SECRETS.items():
        for form in (value, base64.b64encode(value.encode()).decode()):
            if form in text and name not in found:
                found.append(name)
    return found


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=AWS_KEY,
        aws_secret_access_key=AWS_SECRET,
    )
    client.create_bucket(Bucket="weights")
    client.put_object(Bucket="weights", Key="tiny/model.safetensors", Body=b"w" * 4096)
    yield env
    server.stop()


def _prefetches(hub_url: str, s3_env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """The real prefetcher, with every secret in its environment: two failures users can fix
    (a gated Hub repository, a missing bucket) and two successes. Returns each run's output."""
    env = {**SECRETS, **s3_env, "HF_ENDPOINT": hub_url, "HF_HUB_CACHE": str(tmp / "hfcache")}
    runs = {
        "hf-denied": ["--source", "hf://acme/private", "--retries", "2"],
        "hf-ok": ["--source", f"hf://{REPO}"],
        "s3-missing": ["--source", "s3://no-such-bucket/tiny", "--retries", "2"],
        "s3-ok": ["--source", "s3://weights/tiny"],
    }
    out: dict[str, Any] = {}
    for name, args in runs.items():
        res = run_prefetch([*args, "--dest", str(tmp / "dest" / name)], tmp, env=env)
        out[name] = res
    assert out["hf-denied"].rc == 3 and out["s3-missing"].rc == 4, out
    assert out["hf-ok"].rc == 0 and out["s3-ok"].rc == 0, out
    return out


def _modelserver(name: str, source: str, flags: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": source, "credentialsSecretRef": {"name": "model-creds"}},
            "resources": {"gpus": 1},
            "startup": {"optimizations": [{"name": f} for f in flags]},
        },
    }


def _condition(k: Kubectl, name: str, kind: str) -> dict[str, Any] | None:
    status = k.get("ms", name).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


class DebugOperator(OperatorProcess):
    """The operator with kopf's own DEBUG logging configured (as `kopf run --debug` does) and
    GLOWPLUG_LOG_LEVEL=DEBUG: the most it ever logs, the likeliest place for a leak."""

    def start(self) -> DebugOperator:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DEBUG_MAIN],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self


_DEBUG_MAIN = (
    "import sys, kopf; kopf.configure(debug=True, verbose=True); "
    "from glowplug_operator.__main__ import main; sys.exit(main())"
)


@pytest.fixture
def debug_operator(
    kubectl: Kubectl, crd: None, sim_namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = DebugOperator(
        kubectl.kubeconfig, sim_namespace, tmp_path, resync_seconds="5", log_level="DEBUG"
    ).start()
    yield process
    process.kill()


def test_credentials_appear_nowhere_a_user_or_scraper_reads(
    kubectl: Kubectl,
    sim_namespace: str,
    stages: Any,
    debug_operator: OperatorProcess,
    hub: Any,  # noqa: F811
    s3: dict[str, str],
    tmp_path: Path,
) -> None:
    runs = _prefetches(hub.url, s3, tmp_path)
    denied_report = runs["hf-denied"].report
    assert denied_report is not None and denied_report["error"]["type"] == "CredentialsError"

    k = kubectl.in_namespace(sim_namespace)
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "model-creds"},
            "stringData": SECRETS,
        }
    )
    # A failing prefetch: pods of "denied" fail with the real prefetcher's report.
    stages.add(
        b.crash_loop(
            "denied",
            [b.has_label(MODELSERVER_LABEL, "denied")],
            message=json.dumps(denied_report),
            exit_code=3,
            delay_ms=300,
        )
    )
    # A rollback: "flaky" fails while fast-load is on, with a report naming the flag whose
    # message is the real prefetcher's error text (a not-found would blame no flag).
    flag_report = {
        **runs["s3-missing"].report,
        "command": "serve",
        "phase": "load",
        "flag": "fast-load",
        "optimizations": FLAGS,
        "error": {"type": "RuntimeError", "message": runs["s3-missing"].stderr[-500:]},
    }
    stages.add(
        b.crash_loop(
            "flaky",
            [b.has_label(MODELSERVER_LABEL, "flaky"), b.flag_on("fast-load")],
            message=json.dumps(flag_report),
            delay_ms=300,
        )
    )
    stages.add(b.ready("fine", [b.has_label(MODELSERVER_LABEL, "fine")]))
    stages.add(b.ready("fixed", [b.has_label(MODELSERVER_LABEL, "flaky"), b.flag_off("fast-load")]))
    k.apply(
        _modelserver("denied", "hf://acme/private", FLAGS),
        _modelserver("flaky", "s3://weights/tiny", FLAGS),
        _modelserver("fine", "s3://weights/tiny", FLAGS),
    )

    wait_until(
        "denied Degraded",
        lambda: (c := _condition(k, "denied", "Degraded")) and c["status"] == "True",
        timeout=90,
    )
    for name in ("flaky", "fine"):
        wait_until(
            f"{name} Ready",
            lambda n=name: (c := _condition(k, n, "Ready")) and c["status"] == "True",
            timeout=90,
        )
    flaky = k.get("ms", "flaky")["status"]["optimizations"]
    assert {o["name"]: o["state"] for o in flaky}["fast-load"] == "RolledBack"
    # The last transitions' Event and metric are out before the scan.
    wait_until(
        "flaky's OptimizationRolledBack Event and rollback metric",
        lambda: (
            any(
                e["reason"] == "OptimizationRolledBack" and e["involvedObject"]["name"] == "flaky"
                for e in k.get("events")["items"]
            )
            and "glowplug_optimization_rollbacks_total{" in debug_operator.metrics()
            and 'modelserver="flaky"' in debug_operator.metrics()
        ),
        timeout=30,
    )

    scanned: dict[str, str] = {}
    for name, res in runs.items():
        scanned[f"prefetcher {name}: stdout+stderr"] = res.stdout + res.stderr
        scanned[f"prefetcher {name}: termination report"] = json.dumps(res.report)
    scanned["operator log"] = debug_operator.log()
    scanned["operator /metrics"] = debug_operator.metrics()
    scanned["Events"] = k.run("get", "events", "-o", "json")
    scanned["ModelServers (spec and status)"] = k.run("get", "ms", "-o", "json")
    scanned["kubectl describe ms"] = k.run("describe", "ms")
    for kind in ("deployments", "replicasets", "services"):
        scanned[f"{kind} the operator wrote"] = k.run("get", kind, "-o", "json")
    pods = k.get("pods")
    scanned["pods (termination messages)"] = json.dumps(pods)
    terminated = [
        s["lastState"]["terminated"].get("message", "")
        for p in pods["items"]
        for s in (p.get("status") or {}).get("containerStatuses") or []
        if (s.get("lastState") or {}).get("terminated")
    ]
    assert terminated, "no pod carried a termination message: the scan would prove nothing"
    assert "DEBUG" in scanned["operator log"], "the operator logged nothing: nothing was scanned"
    # The scan can find what it looks for: the Secret itself holds every value.
    assert set(_hits(k.run("get", "secret", "model-creds", "-o", "json"))) == set(SECRETS)

    leaks = {where: _hits(text) for where, text in scanned.items() if _hits(text)}
    sizes = ", ".join(f"{where} ({len(text)} B)" for where, text in scanned.items())
    print(f"\nscanned for {len(SECRETS)} secrets (plain and base64): {sizes}")
    assert not leaks, f"credentials leaked: {leaks}"
