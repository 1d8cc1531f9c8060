"""Leader election on a `coordination.k8s.io` Lease, with the `kubernetes` client's helper
(`kubernetes.leaderelection`), and the write permission it grants.

Every replica watches and fills its store; only the one holding the Lease reconciles and writes.
`Leadership.may_write()` is what the API gateway asks before each write. It is bounded by the
lease itself: it says yes only until `renew_deadline` after the last renewal the API server
accepted (measured from when that request was *sent*), which is before any standby can take the
Lease over (`lease_seconds` after it last saw it renewed). So a leader whose renewals stall, even
inside a hung request, stops writing on its own before another one starts. Losing the Lease
ends the process (`on_lost`), as client-go's controllers do: a fresh start becomes a standby.

The helper runs in its own daemon thread with its own API client, so a busy event loop or a
gateway thread pool full of writes never delays a renewal.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

log = logging.getLogger(__name__)

# The helper's seconds between tries (it insists on at least 1, and on renew > 1.2 x retry).
RETRY_SECONDS = 2


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_seconds: int

    @property
    def renew_deadline(self) -> float:
        """How long a leader keeps writing without a renewal: well inside the lease."""
        return max(RETRY_SECONDS * 1.2 + 0.5, self.lease_seconds * 0.7)


class Leadership:
    """Whether this process may write now, and an awaitable for when it first may."""

    def __init__(self, renew_deadline: float | None) -> None:
        # None: no election (one replica, tests, benchmarks): always the leader.
        self._renew_deadline = renew_deadline
        self._renewed_at: float | None = None  # monotonic, when the last accepted renewal left
        self._lost = False
        self._acquired = asyncio.Event() if renew_deadline is None else None
        if self._acquired is not None:
            self._acquired.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def always(cls) -> Leadership:
        return cls(None)

    @property
    def elected(self) -> bool:
        """True where an election decides (more than one replica may run)."""
        return self._renew_deadline is not None

    def may_write(self) -> bool:
        if self._renew_deadline is None:
            return True
        renewed = self._renewed_at
        return (
            not self._lost
            and renewed is not None
            and time.monotonic() - renewed < self._renew_deadline
        )

    async def acquired(self) -> None:
        """Returns once this process holds the Lease (at once without an election)."""
        if self._acquired is None:
            self._loop = asyncio.get_running_loop()
            self._acquired = asyncio.Event()
            if self.may_write():
                self._acquired.set()
        await self._acquired.wait()

    # --- called from the election thread ---------------------------------------------------

    def renewed(self, sent_at: float) -> None:
        first = self._renewed_at is None
        self._renewed_at = sent_at
        if first and self._loop is not None and self._acquired is not None:
            self._loop.call_soon_threadsafe(self._acquired.set)

    def lose(self) -> None:
        self._lost = True


def start_election(
    config: LeaseConfig,
    leadership: Leadership,
    api_client: Any,
    on_lost: Callable[[], object],
) -> Callable[[], None]:
    """Run the `kubernetes` client's LeaderElection in a daemon thread: a standby until it
    acquires the Lease; `on_lost` when the leader fails to renew it (the thread then ends).
    Returns `release`, for a clean shutdown: no more renewals, and the Lease given up if this
    replica holds it, so a standby takes it at its next try instead of after the lease."""
    from kubernetes.client import CoordinationV1Api
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    # The helper logs every try (every 2 s on a standby): keep its warnings only.
    logging.getLogger("leaderelection").setLevel(logging.WARNING)
    timeout = (5.0, float(RETRY_SECONDS) + 1.0)  # no renewal may hang past the deadline

    released = threading.Event()

    class Lock(LeaseLock):
        """The helper's LeaseLock on our API client, telling `leadership` of each renewal."""

        def __init__(self) -> None:
            super().__init__(config.name, config.namespace, config.identity)  # type: ignore[no-untyped-call]
            # The same three calls, each with a timeout (the helper passes none).
            self.api_instance = cast(
                CoordinationV1Api, _Timed(CoordinationV1Api(api_client), timeout)
            )

        def create(self, name: str, namespace: str, election_record: Any) -> bool:
            if released.is_set():
                return False
            sent = time.monotonic()
            ok = bool(super().create(name, namespace, election_record))  # type: ignore[no-untyped-call]
            if ok:
                leadership.renewed(sent)
            return ok

        def update(self, name: str, namespace: str, updated_record: Any) -> bool:
            if released.is_set():
                return False
            sent = time.monotonic()
            ok = bool(super().update(name, namespace, updated_record))  # type: ignore[no-untyped-call]
            if ok and updated_record.holder_identity == config.identity:
                leadership.renewed(sent)
            return ok

    def started() -> None:
        log.info(
            "leader: %s holds Lease %s/%s; reconciling",
            config.identity,
            config.namespace,
            config.name,
        )

    def stopped() -> None:
        leadership.lose()
        if released.is_set():
            return  # a clean shutdown gave the Lease up
        log.error(
            "leader: %s lost Lease %s/%s; writes stopped, exiting",
            config.identity,
            config.namespace,
            config.name,
        )
        on_lost()

    election = leaderelection.LeaderElection(
        electionconfig.Config(
            Lock(),
            lease_duration=config.lease_seconds,
            renew_deadline=config.renew_deadline,
            retry_period=RETRY_SECONDS,
            onstarted_leading=started,
            onstopped_leading=stopped,
        )
    )

    def run() -> None:
        try:
            election.run()
        except Exception:  # the election must never die silently: treat it as a loss
            log.exception("leader election failed")
            stopped()

    log.info(
        "leader: %s is a standby for Lease %s/%s (lease %ss)",
        config.identity,
        config.namespace,
        config.name,
        config.lease_seconds,
    )
    thread = threading.Thread(target=run, name="leader-election", daemon=True)
    thread.start()
    api = _Timed(CoordinationV1Api(api_client), timeout)

    def release() -> None:
        leadership.lose()  # no write from here on
        released.set()  # no renewal either
        try:
            lease = api.read_namespaced_lease(config.name, config.namespace)
            if lease.spec is None or lease.spec.holder_identity != config.identity:
                return
            # As client-go releases: no holder, a 1 s lease; a standby takes it at its next try.
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            api.replace_namespaced_lease(config.name, config.namespace, lease)
            log.info("leader: %s released Lease %s/%s", *_names(config))
        except Exception:  # the Lease then runs out on its own
            log.warning("could not release the Lease", exc_info=True)

    return release


def _names(config: LeaseConfig) -> tuple[str, str, str]:
    return config.identity, config.namespace, config.name


class _Timed:
    """The Lease calls the helper makes, each with a request timeout."""

    def __init__(self, api: Any, timeout: tuple[float, float]) -> None:
        self._api, self._timeout = api, timeout

    def read_namespaced_lease(self, name: str, namespace: str) -> Any:
        return self._api.read_namespaced_lease(name, namespace, _request_timeout=self._timeout)

    def create_namespaced_lease(self, namespace: str, body: Any) -> Any:
        return self._api.create_namespaced_lease(namespace, body, _request_timeout=self._timeout)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any) -> Any:
        return self._api.replace_namespaced_lease(
            name=name, namespace=namespace, body=body, _request_timeout=self._timeout
        )
