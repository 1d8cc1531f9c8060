"""The write permission leader election grants: bounded by the last accepted renewal, gone for
good once the Lease is lost, and enforced by the gateway before any request leaves."""

from __future__ import annotations

import asyncio
import time

import pytest
from glowplug_operator.controller.kube import Kube, NotLeader
from glowplug_operator.controller.leadership import Leadership, LeaseConfig
from glowplug_operator.settings import Settings, SettingsError


class TestLeadership:
    def test_without_an_election_a_replica_always_writes(self) -> None:
        leadership = Leadership.always()
        assert leadership.may_write()
        assert not leadership.elected
        asyncio.run(asyncio.wait_for(leadership.acquired(), 1))

    def test_a_standby_may_not_write_before_its_first_renewal(self) -> None:
        leadership = Leadership(renew_deadline=5.6)
        assert leadership.elected
        assert not leadership.may_write()

    def test_writes_are_allowed_until_the_renew_deadline_after_the_last_renewal_sent(
        self,
    ) -> None:
        leadership = Leadership(renew_deadline=5.6)
        leadership.renewed(time.monotonic())
        assert leadership.may_write()
        leadership.renewed(time.monotonic() - 6)  # a renewal sent 6 s ago: past the deadline
        assert not leadership.may_write()

    def test_a_lost_lease_stops_writes_even_right_after_a_renewal(self) -> None:
        leadership = Leadership(renew_deadline=5.6)
        leadership.renewed(time.monotonic())
        leadership.lose()
        assert not leadership.may_write()

    def test_acquired_returns_once_the_election_thread_reports_a_renewal(self) -> None:
        leadership = Leadership(renew_deadline=5.6)

        async def scenario() -> bool:
            waiting = asyncio.create_task(leadership.acquired())
            await asyncio.sleep(0.05)
            assert not waiting.done()  # a standby: the reconcile loops wait
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, leadership.renewed, time.monotonic())
            await asyncio.wait_for(waiting, 1)
            return True

        assert asyncio.run(scenario())

    def test_the_deadline_is_well_inside_the_lease(self) -> None:
        for seconds in (4, 8, 15, 120):
            deadline = LeaseConfig("l", "ns", "me", seconds).renew_deadline
            assert 2 * 1.2 < deadline < seconds  # the helper's own constraints


class TestGatewayRefusesWithoutTheLease:
    """No request is even attempted: the Kube below has no cluster to reach."""

    def test_every_write_raises_not_leader(self) -> None:
        kube = Kube("glowplug", leadership=Leadership(renew_deadline=5.6))
        body = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}}
        manifest = {"kind": "Service", "metadata": {"name": "m", "namespace": "ns"}}
        writes = [
            kube.apply(manifest),
            kube.delete("Service", "ns", "m"),
            kube.replace_status("ns", "m", {}),
            kube.post_event(body, "Normal", "Ready", "ready"),
        ]
        for write in writes:
            with pytest.raises(NotLeader):
                asyncio.run(write)


class TestLeaseSettings:
    def test_an_election_needs_the_lease_namespace(self) -> None:
        with pytest.raises(SettingsError, match="GLOWPLUG_LEASE_NAMESPACE"):
            Settings.from_env({"GLOWPLUG_LEADER_ELECTION": "true"})

    def test_election_settings_are_read(self) -> None:
        settings = Settings.from_env(
            {
                "GLOWPLUG_LEADER_ELECTION": "true",
                "GLOWPLUG_LEASE_NAMESPACE": "glowplug-system",
                "GLOWPLUG_LEASE_NAME": "gp",
                "GLOWPLUG_LEASE_SECONDS": "10",
                "GLOWPLUG_IDENTITY": "gp-0",
                "GLOWPLUG_API_THREADS": "8",
            }
        )
        assert (settings.leader_election, settings.lease_namespace, settings.lease_name) == (
            True,
            "glowplug-system",
            "gp",
        )
        assert (settings.lease_seconds, settings.identity, settings.api_threads) == (10, "gp-0", 8)
        assert not Settings().leader_election  # one local process needs no Lease
