"""The worker's HTTP API against hostile clients: request bodies generated from its own OpenAPI
document (the valid ones answered, the invalid ones refused naming the field), arbitrary JSON
and bytes, floods, disconnects mid-stream and slow clients. Never a 5xx, no admission slot
leaked, memory bounded. What was tried and the peak memory go to bench/results/worker_api.md.

`make test` runs GLOWPLUG_API_FUZZ_EXAMPLES=60 examples per property; `make test-api-fuzz`
runs 1000."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tests.serve.schemas import from_schema
from tests.serve.servers import Server

pytestmark = pytest.mark.worker

EXAMPLES = int(os.environ.get("GLOWPLUG_API_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MODEL = "fuzzed"
CONCURRENCY, QUEUE = 2, 4
REQUEST_TIMEOUT = 5  # seconds; a body still arriving after this is a 408
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "worker_api.md"
ROUTES = {"/v1/completions": "CompletionRequest", "/v1/chat/completions": "ChatCompletionRequest"}
# A field whose refusal may name its partner: chat's two max-token names, logprobs and its top k.
PARTNERS = {
    "max_tokens": {"max_completion_tokens"},
    "max_completion_tokens": {"max_tokens"},
    "logprobs": {"top_logprobs"},
    "top_logprobs": {"logprobs"},
}
COSTLY = ("max_tokens", "max_completion_tokens", "n")
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


class Tally:
    """Every request the suite sent, by what it tried and the status it got."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()

    def add(self, case: str, status: int) -> None:
        with self.lock:
            self.seen[(case, status)] += 1


TALLY = Tally()


def _memory(pid: int) -> dict[str, int]:
    """The process's resident set now and at its peak (VmHWM), in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(
        tiny_model,
        tmp_path_factory.mktemp("fuzzed"),
        extra=[
            "--served-model-name", MODEL,
            "--max-concurrency", str(CONCURRENCY),
            "--max-queue", str(QUEUE),
            "--request-timeout", str(REQUEST_TIMEOUT),
        ],
    )  # fmt: skip
    try:
        served.wait_ready()
        served.client.post("/v1/completions", json={"prompt": "warm", "max_tokens": 2})
        at_ready = _memory(served.proc.pid)
        yield served
        assert served.proc.poll() is None, f"the server died:\n{served.log()}"
        _report(at_ready, _memory(served.proc.pid))
        assert "Traceback" not in served.log(), served.log()[-3000:]
    finally:
        served.stop()


def _report(at_ready: dict[str, int], after: dict[str, int]) -> None:
    growth_mib = (after["VmHWM"] - at_ready["VmRSS"]) / 1024
    rows = [f"| {case} | {status} | {n} |" for (case, status), n in sorted(TALLY.seen.items())]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "# The worker's HTTP API under hostile clients\n\n"
        f"{EXAMPLES} hypothesis examples per property.\n\n"
        "| case | status | requests |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Resident memory: {at_ready['VmRSS'] / 1024:.0f} MiB once warm, "
        f"peak {after['VmHWM'] / 1024:.0f} MiB (+{growth_mib:.0f} MiB).\n"
    )
    print(RESULTS.read_text())
    # The body limit, the queue and the connection handling keep abuse from growing the process.
    assert growth_mib < 256, f"peak memory grew by {growth_mib:.0f} MiB under abuse"


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    response = server.client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    schema = {**document["components"]["schemas"][name], "components": document["components"]}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _post(server: Server, case: str, path: str, **kw: Any) -> httpx.Response:
    response = server.client.post(path, **kw)
    TALLY.add(case, response.status_code)
    assert response.status_code < 500, f"{case}: {response.status_code} {response.text}"
    return response


def _affordable(body: dict[str, Any]) -> dict[str, Any]:
    """A valid body made cheap to serve on CPU, still valid: the served model's name, at most
    3 tokens and 2 choices, short texts."""
    body = dict(body)
    if "model" in body:
        body["model"] = MODEL
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            body[name] = min(body[name], 3)
    body.setdefault("max_tokens", 3)
    if isinstance(body.get("n"), int):
        body["n"] = min(body["n"], 2)
    if isinstance(body.get("prompt"), str):
        body["prompt"] = body["prompt"][:64]
    if isinstance(body.get("messages"), list):
        body["messages"] = [
            {**m, "content": m["content"][:64]} if isinstance(m["content"], str) else m
            for m in body["messages"][:8]
        ]
    return body


def _error_param(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert error["message"], response.text
    return str(error["param"])


def _root(param: str) -> str:
    """The top-level field a param names: `messages[0].role` -> `messages`."""
    return re.split(r"[.\[]", param, maxsplit=1)[0]


def test_the_document_names_every_route_and_its_schemas_are_valid(
    server: Server, document: dict[str, Any]
) -> None:
    for path, operations in document["paths"].items():
        for method in operations:
            response = server.client.request(method.upper(), path, json={})
            TALLY.add("each documented route", response.status_code)
            assert response.status_code not in (404, 405), f"{method} {path} is not served"
    for name in ("CompletionRequest", "ChatCompletionRequest", "EmbeddingRequest"):
        _validator(document, name)
    assert server.client.get("/v1/undocumented").status_code == 404


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_bodies_the_document_allows_are_answered(
    server: Server, document: dict[str, Any], path: str
) -> None:
    validator = _validator(document, ROUTES[path])

    schema = document["components"]["schemas"][ROUTES[path]]

    @FUZZ
    @given(from_schema(schema).filter(validator.is_valid).map(_affordable))
    def answered(body: dict[str, Any]) -> None:
        assert validator.is_valid(body), body
        response = _post(server, f"{path}: valid", path, json=body)
        assert response.status_code == 200, f"{body}\n{response.text}"
        if not body.get("stream"):
            assert len(response.json()["choices"]) == (body.get("n") or 1)

    answered()


def _mutations(document: dict[str, Any], name: str) -> st.SearchStrategy[tuple[str, Any]]:
    """One field of a request: set to any JSON value, or a field no schema has."""
    fields = sorted(document["components"]["schemas"][name]["properties"])
    return st.tuples(st.sampled_from([*fields, "not_a_field"]), JSON)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_bodies_the_document_refuses_get_a_400_naming_the_field(
    server: Server, document: dict[str, Any], path: str
) -> None:
    name = ROUTES[path]
    validator = _validator(document, name)
    minimal = {"prompt": "hi"} if name == "CompletionRequest" else {"messages": [
        {"role": "user", "content": "hi"}]}  # fmt: skip

    @FUZZ
    @given(_mutations(document, name))
    def refused(mutation: tuple[str, Any]) -> None:
        field, value = mutation
        body = {**minimal, "max_tokens": 2, field: value}
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if field in COSTLY and number and value > 4:
            return  # valid and costly (or past the context); valid bodies are covered above
        response = _post(server, f"{path}: one field mutated", path, json=body)
        if validator.is_valid(body):
            if field == "model" and value not in (None, MODEL):
                assert response.status_code == 404, response.text
                assert _error_param(response) == "model"
            else:
                assert response.status_code == 200, f"{body}\n{response.text}"
            return
        assert response.status_code == 400, f"{body}\n{response.text}"
        assert _root(_error_param(response)) in {field, *PARTNERS.get(field, ())}, response.text

    refused()


@FUZZ
@given(st.sampled_from([*ROUTES, "/v1/embeddings"]), JSON | st.binary(max_size=64))
def test_any_json_or_bytes_gets_an_error_body_never_a_5xx(
    server: Server, path: str, payload: Any
) -> None:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = _post(server, f"{path}: any JSON or bytes", path, content=content)
    if response.status_code != 200:  # a random object can be a valid request
        assert 400 <= response.status_code < 500
        _error_param(response)


def _metric(server: Server, name: str) -> float:
    text = server.client.get("/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _idle(server: Server, within: float = 10.0) -> None:
    """The admission queue holds nothing and no slot is taken."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if (
            _metric(server, "glowplug_worker_requests_running")
            == _metric(server, "glowplug_worker_queue_depth")
            == 0
        ):
            return
        time.sleep(0.1)
    raise AssertionError("a slot or queue entry is still held")


def _full_capacity_is_served(server: Server) -> None:
    """As many requests at once as the server admits: all served, so no slot leaked."""
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            body = {"prompt": "capacity", "max_tokens": 2}
            statuses.append(c.post("/v1/completions", json=body).status_code)

    threads = [threading.Thread(target=one) for _ in range(CONCURRENCY + QUEUE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * (CONCURRENCY + QUEUE)


def test_a_flood_gets_answers_or_429s_and_leaks_no_slot(server: Server) -> None:
    statuses: list[int] = []
    long = {"prompt": "flood", "max_tokens": 48, "ignore_eos": True}

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            response = c.post("/v1/completions", json=long)
            TALLY.add("flood of 64 at once", response.status_code)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    ready = server.client.get("/ready", timeout=5)  # the probe answers through the flood
    for t in threads:
        t.join()
    assert ready.status_code == 200
    assert set(statuses) <= {200, 429} and statuses.count(200) >= CONCURRENCY + QUEUE
    assert 429 in statuses, "the flood never filled the queue"
    _idle(server)
    _full_capacity_is_served(server)


def test_clients_that_disconnect_mid_stream_free_their_slots(server: Server) -> None:
    body = {"prompt": "cut", "max_tokens": 400, "ignore_eos": True, "stream": True}
    for _ in range(2 * (CONCURRENCY + QUEUE)):
        with (
            httpx.Client(base_url=server.url, timeout=60) as c,
            c.stream("POST", "/v1/completions", json=body) as response,
        ):
            TALLY.add("disconnect after the first event", response.status_code)
            assert response.status_code == 200
            next(response.iter_lines())
        # Leaving the block closes the connection mid-stream.
    _idle(server)
    _full_capacity_is_served(server)


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_TIMEOUT * 3)


def test_slow_clients_hold_no_slot_and_slow_bodies_get_a_408(server: Server) -> None:
    # Clients that never finish their headers, and clients that promise a body and stall.
    stalled_headers = []
    for _ in range(100):
        s = _connect(server)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        stalled_headers.append(s)
    stalled_bodies = []
    for _ in range(20):
        s = _connect(server)
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"prompt": '
        )
        stalled_bodies.append(s)
    began = time.monotonic()
    try:
        # The server serves others meanwhile.
        assert server.client.get("/ready", timeout=2).status_code == 200
        assert server.complete("still here", max_tokens=2)["choices"]
        _full_capacity_is_served(server)
        for s in stalled_bodies:
            answer = s.recv(4096).decode(errors="replace")
            status = int(answer.split()[1])
            TALLY.add("body promised and stalled", status)
            assert status == 408, answer
        waited = time.monotonic() - began
        assert waited < REQUEST_TIMEOUT + 5, f"the 408s came after {waited:.1f} s"
    finally:
        for s in stalled_headers + stalled_bodies:
            s.close()
    for _ in stalled_headers:
        TALLY.add("headers never finished (0: held open, no slot taken)", 0)
    _idle(server)
