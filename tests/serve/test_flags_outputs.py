"""Every flag alone and all flags together start the server and give exactly the outputs of the
plain (no flags) start. (`background-import` alone is the `narrow` server of test_lifecycle.py,
checked there with `outputs()` from here: one server start fewer.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from glowplug_worker.serve.startup.flags import KNOWN_FLAGS

from tests.serve.servers import Server, all_running

pytestmark = pytest.mark.worker

COMBOS = [*(f for f in KNOWN_FLAGS if f != "background-import"), ",".join(KNOWN_FLAGS)]
PROMPTS = ["Hello, world!", "The operator watches readiness", "café 東京"]


@pytest.fixture(scope="module")
def flag_servers(
    tiny_sharded: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    # Started together: their imports overlap, which is much faster on few cores. The sharded
    # copy of the tiny model (same weights) exercises the index and several files.
    servers = {
        combo: Server(
            tiny_sharded,
            tmp_path_factory.mktemp("flags"),
            flags=combo + ",some-custom-flag",
            extra=["--served-model-name", "tiny"],
        )
        for combo in COMBOS
    }
    with all_running(servers):
        yield servers


def outputs(server: Server) -> list[str]:
    texts = [server.complete(p, max_tokens=24)["choices"][0]["text"] for p in PROMPTS]
    r = server.client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Pack my box"}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert r.status_code == 200, r.text
    return [*texts, r.json()["choices"][0]["message"]["content"]]


@pytest.mark.parametrize("combo", COMBOS)
def test_greedy_outputs_identical_to_no_flags(
    combo: str, baseline: Server, flag_servers: dict[str, Server]
) -> None:
    server = flag_servers[combo]
    startup = server.client.get("/startup").json()
    assert startup["optimizations"] == [f for f in KNOWN_FLAGS if f in combo.split(",")]
    assert startup["ignored_optimizations"] == ["some-custom-flag"]
    assert "ignoring unknown optimization 'some-custom-flag'" in server.log()
    assert outputs(server) == outputs(baseline)


def test_each_flag_leaves_its_trace(flag_servers: dict[str, Server]) -> None:
    details = {c: s.client.get("/startup").json()["details"] for c, s in flag_servers.items()}
    assert details["fast-load"]["load"]["loader"] == "fast-load"
    assert details["native-model"]["load"]["loader"] == "native-model"
    assert details["native-model"]["native_model"] == {"used": True, "reason": None}
    assert details["hf-offline"]["load"]["loader"] == "transformers"
    assert details["prefetch-weights"]["prefetch"]["files"] == 4
    assert details[COMBOS[-1]]["background_import_seconds"] > 0
    assert details["slim-imports"]["slim_imports_blocked"] == ["sklearn", "scipy", "boto3"]
    metrics = flag_servers[COMBOS[-1]].client.get("/metrics").text
    for flag in KNOWN_FLAGS:
        assert f'glowplug_worker_optimization_active{{flag="{flag}"}} 1.0' in metrics
