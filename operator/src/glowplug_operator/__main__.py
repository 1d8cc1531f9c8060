"""`glowplug-operator`: run the controller (kopf) with the namespaces from the settings."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import socket
import sys

import kopf
from kopf._core.engines.peering import Identity

from glowplug_operator.controller.leadership import Leadership, LeaseConfig
from glowplug_operator.logs import configure as configure_logging
from glowplug_operator.settings import Settings, SettingsError
from glowplug_operator.stopping import operate

# The exit status when the Lease was lost: the container restarts and becomes a standby.
LOST_LEASE = 3
M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2
GC_YOUNG_ALLOCATIONS = 20_000
GC_OLDER_RATIO = 20


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas. Each thread that contends for malloc gets its own arena (up
    to 8 per core), and what one arena frees the others do not reuse; the API client's thread
    pool reads every response body. With the cap, the peak RSS at 1000 ModelServers went from
    227 to 213 MB (bench/operator_scale.py, one quiet run each). No-op (False) where the C
    library is not glibc."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def tune_garbage_collection() -> None:
    """The store keeps thousands of decoded objects: trees of dicts and lists without cycles,
    which reference counting frees. CPython's default thresholds (700, 10, 10) still scan them:
    a full collection each time the heap grows by a quarter, and a young one every 700
    allocations while a watch event is decoded. That was 27% of the operator's CPU at 300
    ModelServers (bench/operator_scale.py). Young collections now come every 20000 allocations,
    older ones more rarely, and the objects alive after the imports are left out of every scan."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_ALLOCATIONS, GC_OLDER_RATIO, GC_OLDER_RATIO)


def main() -> int:
    limit_malloc_arenas()  # before any thread starts
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"glowplug-operator: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    import glowplug_operator.controller.registration  # noqa: F401 - registers the handlers

    tune_garbage_collection()  # after the imports: their objects are frozen

    # kopf would otherwise name itself after the user, which an image's numeric uid without a
    # passwd entry (65532) does not have: it crashed at start.
    identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
    leadership = (
        Leadership(
            LeaseConfig(
                settings.lease_name, settings.lease_namespace, identity, settings.lease_seconds
            ).renew_deadline
        )
        if settings.leader_election
        else Leadership.always()
    )
    lost = asyncio.run(_operate(settings, identity, leadership))
    return LOST_LEASE if lost else 0


async def _operate(settings: Settings, identity: str, leadership: Leadership) -> bool:
    """Run kopf until a signal or a lost Lease; True for the latter. `stop` is the flag the
    signals set too (stopping.py); the election thread sets `lost` and `stop` through the loop."""
    stop, lost = asyncio.Event(), asyncio.Event()
    # The settings are read once, here; the startup handler finds them in kopf's memo.
    await operate(
        stop,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
        ),
        standalone=True,
        identity=Identity(identity),
        memo=kopf.Memo(
            settings=settings, leadership=leadership, identity=identity, stop=stop, lost=lost
        ),
    )
    return lost.is_set()


if __name__ == "__main__":
    sys.exit(main())
