"""kwok Stages that decide how a test's pods behave (see tests/cluster/README.md).

Pods in namespaces named `sim-*` go through kwok's default create and init stages but are never
made Ready by the default `pod-ready` stage; a test creates Stages with these helpers to choose
the outcome: Ready after a delay, crash in a loop with a termination message, or never Ready.
Selectors are kwok matchExpressions (jq over the pod), so a behaviour can depend on the pod's
labels, annotations or, for glowplug, on the startup flags in `glowplug.dev/optimizations`.
"""

from __future__ import annotations

import json
from typing import Any

from glowplug_operator.contract import FLAGS_ANNOTATION

Expr = dict[str, Any]


def in_namespace(namespace: str) -> Expr:
    return {"key": ".metadata.namespace", "operator": "In", "values": [namespace]}


def has_label(key: str, value: str) -> Expr:
    return {"key": f'.metadata.labels["{key}"]', "operator": "In", "values": [value]}


def jq_true(expression: str) -> Expr:
    """Select pods for which a jq expression over the pod is true."""
    return {"key": expression, "operator": "In", "values": ["true"]}


def jq_false(expression: str) -> Expr:
    return {"key": expression, "operator": "NotIn", "values": ["true"]}


def _flags_contain(flag: str) -> str:
    return f'(.metadata.annotations["{FLAGS_ANNOTATION}"] // "") | split(",") | any(. == "{flag}")'


def first_start() -> Expr:
    """Pods whose worker has not failed yet (no last termination)."""
    return jq_true("((.status.containerStatuses // [])[0].lastState.terminated // null) == null")


def after_a_failure() -> Expr:
    return jq_false("((.status.containerStatuses // [])[0].lastState.terminated // null) == null")


def flag_on(flag: str) -> Expr:
    """Pods whose template has `flag` in its startup flag set."""
    return jq_true(_flags_contain(flag))


def flag_off(flag: str) -> Expr:
    return jq_false(_flags_contain(flag))


def name_hash_mod(modulus: int, remainder: int) -> Expr:
    """Pods whose name's code points sum to `remainder` mod `modulus`: a deterministic way to make
    a fraction (about 1/modulus) of pods behave differently, e.g. an intermittent failure."""
    return jq_true(f"(.metadata.name | explode | add) % {modulus} == {remainder}")


def name_hash_not_mod(modulus: int, remainder: int) -> Expr:
    return jq_false(f"(.metadata.name | explode | add) % {modulus} == {remainder}")


_NOT_DELETED: Expr = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
_INITIALIZED: Expr = jq_true(
    '.status.conditions | any(.type == "Initialized" and .status == "True")'
)
_NOT_RUNNING_YET: Expr = {
    "key": ".status.containerStatuses.[].state.running.startedAt",
    "operator": "DoesNotExist",
}


def _stage(name: str, selector: list[Expr], delay_ms: int, status_template: str) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name, "labels": {"glowplug.dev/test-stage": "true"}},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": [_NOT_DELETED, *selector]},
            "weight": 1,
            "delay": {"durationMilliseconds": delay_ms, "jitterDurationMilliseconds": 100},
            "next": {"statusTemplate": status_template},
        },
    }


# As a kubelet shows it: coming out of CrashLoopBackOff means one more restart.
_CONTAINER_HISTORY = """\
  {{ $s := index $.status.containerStatuses $index }}
  {{ $rc := int (dig "restartCount" 0 $s) }}
  {{ $backoff := eq (dig "state" "waiting" "reason" "" $s) "CrashLoopBackOff" }}
  restartCount: {{ if $backoff }}{{ add1 $rc }}{{ else }}{{ $rc }}{{ end }}
  {{ with dig "lastState" "terminated" nil $s }}lastState: {terminated: {{ toJson . }}}{{ end }}
"""

_READY_TEMPLATE = (
    """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: true
  started: true
"""
    + _CONTAINER_HISTORY
    + """\
  state:
    running: {startedAt: {{ $now | Quote }}}
{{ end }}
phase: Running
"""
)


def ready(name: str, selector: list[Expr], delay_ms: int = 500) -> dict[str, Any]:
    """Pods become Ready `delay_ms` after their init container completed."""
    return _stage(name, [_INITIALIZED, *selector, _NOT_RUNNING_YET], delay_ms, _READY_TEMPLATE)


# A pod whose containers run (or restart) but are not ready; each template goes on per container.
_NOT_READY_HEADER = """\
{{ $now := Now }}
conditions:
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }}}
- type: ContainersReady
  status: "False"
  reason: ContainersNotReady
  lastTransitionTime: {{ $now | Quote }}
containerStatuses:
{{ range $index, $item := .spec.containers }}
- image: {{ $item.image | Quote }}
  name: {{ $item.name | Quote }}
  ready: false
  started: false
"""


def _crash_template(exit_code: int, reason: str, message: str) -> str:
    quoted = json.dumps(message)
    return (
        _NOT_READY_HEADER
        + """\
  {{ $s := index $.status.containerStatuses $index }}
  {{ $rc := int (dig "restartCount" 0 $s) }}
  {{ $backoff := eq (dig "state" "waiting" "reason" "" $s) "CrashLoopBackOff" }}
  restartCount: {{ if $backoff }}{{ add1 $rc }}{{ else }}{{ $rc }}{{ end }}
  lastState:
    terminated:
      exitCode: EXIT_CODE
      reason: REASON
      message: MESSAGE
      startedAt: {{ $now | Quote }}
      finishedAt: {{ $now | Quote }}
  state:
    waiting:
      reason: CrashLoopBackOff
      message: back-off restarting failed container {{ $item.name }}
{{ end }}
phase: Running
""".replace("EXIT_CODE", str(exit_code))
        .replace("REASON", json.dumps(reason))
        .replace("MESSAGE", quoted)
    )


def crash_loop(
    name: str,
    selector: list[Expr],
    *,
    message: str = "",
    exit_code: int = 1,
    reason: str = "Error",
    delay_ms: int = 500,
) -> dict[str, Any]:
    """Pods' containers exit with `exit_code` and `message` as termination message, again and
    again, as a kubelet shows it: the first exit leaves restartCount at 0 in CrashLoopBackOff,
    each later one (a restart that failed again) adds one."""
    crashing: Expr = {
        "key": ".status.containerStatuses.[].state.waiting.reason",
        "operator": "In",
        "values": ["ContainerCreating", "CrashLoopBackOff", "PodInitializing"],
    }
    return _stage(
        name,
        [_INITIALIZED, *selector, crashing],
        delay_ms,
        _crash_template(exit_code, reason, message),
    )


_RUNNING_NOT_READY_TEMPLATE = (
    _NOT_READY_HEADER
    + """\
  restartCount: {{ or (index $.status.containerStatuses $index).restartCount 0 }}
  state:
    running: {startedAt: {{ $now | Quote }}}
{{ end }}
phase: Running
"""
)


def never_ready(name: str, selector: list[Expr], delay_ms: int = 300) -> dict[str, Any]:
    """Pods run but never pass their startup/readiness probe (a hang, not a crash)."""
    return _stage(
        name, [_INITIALIZED, *selector, _NOT_RUNNING_YET], delay_ms, _RUNNING_NOT_READY_TEMPLATE
    )


def _image_pull_template(reason: str, message: str) -> str:
    return (
        _NOT_READY_HEADER
        + """\
  restartCount: 0
  state:
    waiting:
      reason: REASON
      message: MESSAGE
{{ end }}
phase: Pending
""".replace("REASON", json.dumps(reason)).replace("MESSAGE", json.dumps(message))
    )


def image_pull_failure(
    name: str,
    selector: list[Expr],
    *,
    reason: str = "ErrImagePull",
    message: str = "failed to pull image: not found",
    delay_ms: int = 300,
) -> dict[str, Any]:
    """Pods' worker image cannot be pulled: after the init container, the containers wait with
    `reason` (ErrImagePull, ImagePullBackOff) and the kubelet's `message`, and never start."""
    creating: Expr = {
        "key": ".status.containerStatuses.[].state.waiting.reason",
        "operator": "In",
        "values": ["ContainerCreating", "PodInitializing"],
    }
    return _stage(
        name, [_INITIALIZED, *selector, creating], delay_ms, _image_pull_template(reason, message)
    )
