"""`glowplug-operator`: run the controller (kopf) with the namespaces from the settings."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import kopf
from kopf._core.engines.peering import Identity

from glowplug_operator.logs import configure as configure_logging
from glowplug_operator.settings import Settings, SettingsError
from glowplug_operator.stopping import operate


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"glowplug-operator: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    import glowplug_operator.controller.registration  # noqa: F401 - registers the handlers

    # The settings are read once, here; the startup handler finds them in kopf's memo.
    asyncio.run(
        operate(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            liveness_endpoint=(
                f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
            ),
            standalone=True,
            # kopf would otherwise name itself after the user, which an image's numeric uid
            # without a passwd entry (65532) does not have: it crashed at start.
            identity=Identity(f"{socket.gethostname()}-{os.getpid()}"),
            memo=kopf.Memo(settings=settings),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
