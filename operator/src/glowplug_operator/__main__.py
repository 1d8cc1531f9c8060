"""`glowplug-operator`: run the controller (kopf) with the namespaces from the settings."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import kopf
from kopf._core.engines.peering import Identity

from glowplug_operator.controller.leadership import Leadership, LeaseConfig
from glowplug_operator.logs import configure as configure_logging
from glowplug_operator.memory import limit_malloc_arenas, tune_garbage_collection
from glowplug_operator.settings import Settings, SettingsError
from glowplug_operator.stopping import operate

# The exit status when the Lease was lost: the container restarts and becomes a standby.
LOST_LEASE = 3


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
