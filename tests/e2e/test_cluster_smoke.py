"""The local control plane behaves like a real cluster where the product depends on it."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster import behaviours
from tests.cluster.kube import Kubectl, wait_until


def _deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict:
    labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.example/app:1",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsUser": 1000,
                            },
                        }
                    ],
                },
            },
        },
    }


def _available(k: Kubectl, deployment: dict) -> None:
    """Apply the Deployment and wait until its pods are Ready (kwok's stages)."""
    k.apply(deployment)
    name = deployment["metadata"]["name"]
    k.run("wait", "--for=condition=Available", f"deployment/{name}", "--timeout=60s")


def test_apiserver_is_ready(kubectl: Kubectl) -> None:
    assert kubectl.run("get", "--raw", "/readyz").strip() == "ok"


def test_deployment_becomes_ready_on_kwok_nodes(
    kubectl: Kubectl, namespace: str, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    _available(k, _deployment("web", 2))
    deployment = k.get("deployment", "web")
    assert deployment["status"]["readyReplicas"] == 2
    nodes = {p["spec"]["nodeName"] for p in k.get("pods", selector="app=web")["items"]}
    assert nodes <= {"kwok-gpu-0", "kwok-gpu-1"}


def test_gpu_nodes_advertise_gpus(kubectl: Kubectl, needs_kwok: None) -> None:
    nodes = kubectl.get("nodes", selector="type=kwok")["items"]
    assert len(nodes) >= 2
    assert all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in nodes)


def test_pod_selected_to_crash_shows_crash_loop_with_message(
    kubectl: Kubectl, sim_namespace: str, stages
) -> None:
    report = json.dumps({"phase": "load", "error": "boom"})
    stages.add(
        behaviours.crash_loop(
            "crash", [behaviours.has_label("app", "crashy")], message=report, exit_code=3
        )
    )
    k = kubectl.in_namespace(sim_namespace)
    k.apply(_deployment("crashy", 1))

    def crashed():
        pods = k.get("pods", selector="app=crashy")["items"]
        statuses = [s for p in pods for s in p.get("status", {}).get("containerStatuses", [])]
        return [s for s in statuses if s.get("restartCount", 0) >= 2]

    status = wait_until("the pod to crash twice", crashed, timeout=60)[0]
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert json.loads(status["lastState"]["terminated"]["message"]) == {
        "phase": "load",
        "error": "boom",
    }
    table = k.run("get", "pods", "-l", "app=crashy")
    assert "CrashLoopBackOff" in table


def test_deleting_a_deployment_garbage_collects_its_pods(
    kubectl: Kubectl, namespace: str, needs_kwok: None
) -> None:
    k = kubectl.in_namespace(namespace)
    k.apply(_deployment("gc", 2))
    wait_until("2 pods", lambda: len(k.get("pods", selector="app=gc")["items"]) == 2)
    k.run("delete", "deployment", "gc", "--wait=false")
    wait_until(
        "pods garbage-collected", lambda: not k.get("pods", selector="app=gc")["items"], timeout=60
    )
    assert not k.get("replicasets")["items"]


def test_serviceaccount_without_rolebinding_is_forbidden(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    k.run("create", "serviceaccount", "nobody")
    proc = subprocess.run(
        [
            kubectl.binary,
            f"--kubeconfig={kubectl.kubeconfig}",
            "-n",
            namespace,
            "get",
            "pods",
            f"--as=system:serviceaccount:{namespace}:nobody",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "forbidden" in proc.stderr.lower()
    assert "(Forbidden)" in proc.stderr or "is forbidden" in proc.stderr
    can_i = k.run(
        "auth",
        "can-i",
        "list",
        "pods",
        f"--as=system:serviceaccount:{namespace}:nobody",
        check=False,
    )
    assert can_i.strip() == "no"


def test_serviceaccount_tokens_authenticate(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    k.run("create", "serviceaccount", "reader")
    token = k.run("create", "token", "reader").strip()
    cluster = yaml.safe_load(Path(kubectl.kubeconfig).read_text())["clusters"][0]["cluster"]
    whoami = subprocess.run(
        [
            kubectl.binary,
            "--kubeconfig=/dev/null",
            f"--server={cluster['server']}",
            f"--certificate-authority={cluster['certificate-authority']}",
            f"--token={token}",
            "auth",
            "whoami",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert whoami.returncode == 0, whoami.stderr
    assert (
        json.loads(whoami.stdout)["status"]["userInfo"]["username"]
        == f"system:serviceaccount:{namespace}:reader"
    )


def test_privileged_pod_refused_in_restricted_namespace(kubectl: Kubectl, namespace: str) -> None:
    k = kubectl.in_namespace(namespace)
    accepted, output = k.try_apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "priv"},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
                    ]
                },
            }
        )
    )
    assert not accepted
    assert 'violates PodSecurity "restricted:latest"' in output
    assert "privileged" in output


def test_kwok_pod_addresses_stay_on_this_host(
    kubectl: Kubectl, namespace: str, needs_kwok: None
) -> None:
    # The operator connects to each Ready pod (its /startup). A simulated pod's address must fail
    # at once here (route 'unreachable'), never leave through the host's default route.
    k = kubectl.in_namespace(namespace)
    _available(k, _deployment("addressed", 1))
    pod = k.get("pods", selector="app=addressed")["items"][0]
    ip = pod["status"]["podIP"]
    started = time.monotonic()
    with pytest.raises(OSError) as refused:
        socket.create_connection((ip, 8000), timeout=5)
    assert refused.value.errno == errno.EHOSTUNREACH
    assert time.monotonic() - started < 1
