"""The WeightsReady condition: whether a ModelServer's weights are on its pods' volume, read from
the pods' prefetch init containers, or, with `overlap-download`, from their workers, which
download as they start."""

from __future__ import annotations

from collections.abc import Sequence

from glowplug_operator.rollback import Condition, PodObservation
from glowplug_operator.spec import OVERLAP_DOWNLOAD


def weights_ready(observations: Sequence[PodObservation], flags_hash: str) -> Condition:
    """WeightsReady from the pods (those of the flag set in force first): their prefetch init
    containers, or, with `overlap-download`, their workers, which download as they start."""
    if not observations:
        return Condition("WeightsReady", "Unknown", "NoPods", "no pod has started yet")
    pods = [o for o in observations if o.flags_hash == flags_hash] or observations
    failure = None
    for pod in pods:
        ready, failed = _pod_weights(pod)
        if ready is not None:
            return ready
        failure = failure or failed
    if failure is not None:
        return failure
    in_worker = any(OVERLAP_DOWNLOAD in p.flags for p in pods)
    if in_worker:
        downloader, message = (
            "worker",
            f"the worker downloads the weights as it starts ({OVERLAP_DOWNLOAD})",
        )
        downloading = any(p.worker is not None and p.worker.running for p in pods)
    else:
        downloader, message = "prefetch init container", "the prefetch init container is running"
        downloading = any(p.init is not None and p.init.running for p in pods)
    if not downloading:
        stuck = next((p for p in pods if p.blocked_reason or p.unschedulable), None)
        if stuck is not None:
            return _not_started(stuck, downloader)
    return Condition("WeightsReady", "False", "Downloading", message)


def _pod_weights(pod: PodObservation) -> tuple[Condition | None, Condition | None]:
    """One pod's word on the weights: (ready, None), (None, failed), or (None, None)."""
    init, worker = pod.init, pod.worker
    if OVERLAP_DOWNLOAD in pod.flags:  # no init container: the worker's own download phase
        if pod.ready:
            how = f"the worker downloaded the weights as it started ({OVERLAP_DOWNLOAD})"
            return Condition("WeightsReady", "True", "Downloaded", how), None
        report = worker.report if worker is not None else None
        if worker is not None and report is not None and report.phase == "download":
            message = (worker.last_failure_message or "")[:512]
            return None, Condition("WeightsReady", "False", "DownloadFailed", message)
        return None, None
    if init is None:
        return None, None
    if init.succeeded_now:
        report = init.final_report
        reused = bool(report and report.download and report.download.reused)
        how = "reused from the cache" if reused else "downloaded"
        reason = "Reused" if reused else "Downloaded"
        return Condition("WeightsReady", "True", reason, f"weights {how}"), None
    if worker is not None and worker.has_started:
        return Condition(
            "WeightsReady", "True", "Downloaded", "weights are on the pod's volume"
        ), None
    if init.last_failure_message is not None:
        message = init.last_failure_message[:512]
        return None, Condition("WeightsReady", "False", "DownloadFailed", message)
    return None, None


def _not_started(pod: PodObservation, downloader: str) -> Condition:
    """No `downloader` (the prefetch init container, or the worker with overlap-download) runs,
    and the pod cannot start one yet: say what it waits for (a node, its image) instead of
    claiming a download. A pod on its way (PodInitializing, ContainerCreating) is left as
    Downloading: one status write less on the way to Ready."""
    if pod.unschedulable:
        why = f"pod {pod.name} is not scheduled: {pod.unschedulable}"
    else:
        why = f"pod {pod.name} waits: {pod.waiting_reason}" + (
            f": {pod.waiting_message}" if pod.waiting_message else ""
        )
    return Condition(
        "WeightsReady", "Unknown", "NotStarted", f"no {downloader} runs yet; {why}"[:512]
    )
