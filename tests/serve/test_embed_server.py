"""`--task embed` with the real all-MiniLM-L6-v2: /v1/embeddings gives what sentence-transformers
computes for the same text."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.servers import Server

pytestmark = pytest.mark.worker

TEXTS = ["A glow plug pre-heats a diesel engine.", "How are you today?", "東京 café"]


@pytest.fixture(scope="module")
def embed_server(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(
        minilm,
        tmp_path_factory.mktemp("embed"),
        task="embed",
        flags="fast-load,hf-offline",
        extra=["--served-model-name", "minilm"],
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_embeddings_match_sentence_transformers(embed_server: Server, minilm: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    r = embed_server.client.post("/v1/embeddings", json={"input": TEXTS, "model": "minilm"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    ours = torch.tensor([d["embedding"] for d in body["data"]])
    ref = SentenceTransformer(str(minilm), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert ours.shape == (3, 384)
    assert torch.allclose(ours, ref.float(), atol=1e-5)
    assert body["usage"]["prompt_tokens"] > len(TEXTS)

    b64 = embed_server.client.post(
        "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert torch.allclose(torch.tensor(struct.unpack("<384f", raw)), ours[0], atol=1e-6)


def test_generation_endpoints_refuse_on_an_embedding_server(embed_server: Server) -> None:
    r = embed_server.client.post("/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"]
    r = embed_server.client.post("/v1/embeddings", json={"input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_an_embeddings_batch_past_the_request_timeout_is_a_504(
    minilm: Path, tmp_path: Path
) -> None:
    import time

    server = Server(
        minilm,
        tmp_path / "run",
        task="embed",
        extra=["--request-timeout", "0.2", "--max-concurrency", "1", "--max-queue", "0"],
    )
    server.wait_ready()
    try:
        batch = [" ".join(["a glow plug pre-heats a diesel engine"] * 30)] * 256
        slow = server.client.post("/v1/embeddings", json={"input": batch})
        assert slow.status_code == 504, slow.text[:200]
        assert slow.json()["error"]["type"] == "timeout_error"
        # The batch still runs and holds the one slot until it ends; then the server serves.
        deadline = time.monotonic() + 60
        while True:
            small = server.client.post("/v1/embeddings", json={"input": ["hi"]})
            if small.status_code == 200 or time.monotonic() > deadline:
                break
            assert small.status_code in (429, 504), small.text
            time.sleep(0.2)
        assert small.status_code == 200
    finally:
        server.stop()
