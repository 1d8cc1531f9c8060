"""Engines: what each one renders into the worker container, the spec's refusals, and the flag a
failed engine's last log lines blame (rollback/signatures.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from glowplug_operator.builders import build_deployment
from glowplug_operator.commands import engine_flag_definition
from glowplug_operator.engines import ENGINES
from glowplug_operator.rollback import (
    Decision,
    FlagDefinition,
    Rollout,
    attribute,
    decide,
    observe_pod,
)
from glowplug_operator.rollback.signatures import blame, last_log_line
from glowplug_operator.settings import Settings
from glowplug_operator.spec import InvalidSpec, parse_spec

from tests.unit.test_builders import ENGINE_EXAMPLES, env, example, owner_of, prefetch, worker

LOGS = Path(__file__).resolve().parents[1] / "data" / "engine-logs"
SETTINGS = Settings(prefetch_image="ghcr.io/glowplug/prefetch:9", worker_image="worker:9")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def body(engine: dict[str, Any], **spec: Any) -> dict[str, Any]:
    spec.setdefault("model", {"source": "hf://org/name"})
    return {
        "apiVersion": "glowplug.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u-1"},
        "spec": {"engine": engine, **spec},
    }


def render(raw: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(raw)
    flags = [f.name for f in spec.startup.optimizations]
    return build_deployment(owner_of(raw), spec, SETTINGS, flags, "0" * 16)


class TestRendering:
    @pytest.mark.parametrize("name", ENGINE_EXAMPLES)
    def test_the_prefetcher_is_glowplugs_whatever_the_engine(self, name: str) -> None:
        from glowplug_worker.prefetch.cli import parse_options

        dep = render(example(name))
        init = prefetch(dep)
        assert init["image"] == "ghcr.io/glowplug/prefetch:9"
        assert init["command"] == ["glowplug-worker"]
        opts, _ = parse_options(init["args"][1:], env(init))
        # The engine reads the directory the prefetcher fills, and never the hub itself.
        serve = worker(dep)
        assert env(serve)["GLOWPLUG_MODEL_DIR"] == opts.dest
        assert env(serve)["HF_HUB_OFFLINE"] == "1"
        assert "envFrom" not in serve  # the credentials stay with the prefetcher

    @pytest.mark.parametrize(
        ("kind", "option"), [("vllm", "--tensor-parallel-size"), ("sglang", "--tp-size")]
    )
    def test_gpus_become_tensor_parallelism(self, kind: str, option: str) -> None:
        args = worker(render(body({"kind": kind}, resources={"gpus": 4})))["args"]
        assert args[args.index(option) + 1] == "4"

    def test_vllm_command_line(self) -> None:
        serve = worker(render(example("engine-vllm")))
        assert serve["image"] == "vllm/vllm-openai:v0.18.0"
        assert serve["command"] == ["vllm", "serve"]
        args = serve["args"]
        assert args[0] == env(serve)["GLOWPLUG_MODEL_DIR"]
        assert args[args.index("--served-model-name") + 1] == "llama-3b-vllm"
        assert args[args.index("--load-format") + 1] == "runai_streamer"  # the flag's args
        assert env(serve)["VLLM_CACHE_ROOT"] == "/models/.vllm"  # {cache}: the shared volume
        assert serve["startupProbe"]["httpGet"]["path"] == "/health"

    def test_the_builtin_engine_is_unchanged(self) -> None:
        serve = worker(render(body({})))
        assert serve["command"] == ["glowplug-worker"]
        assert serve["image"] == "worker:9"
        assert serve["startupProbe"]["httpGet"]["path"] == "/ready?wait=0.9"

    @pytest.mark.parametrize("flags", [[], ["flash-attention"], ["continuous-batching"]])
    def test_transformers_serve_accepts_the_rendered_command_line(self, flags: list[str]) -> None:
        """Parsed by transformers' own `serve` command (click), as the container would."""
        from transformers.cli.transformers import app

        raw = body(
            {"kind": "transformers-serve"},
            startup={"optimizations": [{"name": f} for f in flags]},
        )
        serve = worker(render(raw))
        assert serve["image"] == "worker:9"  # glowplug's worker image ships transformers serve
        # A shell links the served name to the prefetched directory, then runs the server on it.
        assert serve["command"][:2] == ["/bin/sh", "-c"]
        assert 'exec transformers serve "$GLOWPLUG_SERVED_MODEL_NAME" "$@"' in serve["command"][2]
        argv = [env(serve)["GLOWPLUG_SERVED_MODEL_NAME"], *serve["args"]]
        params = app.commands["serve"].make_context("serve", argv).params
        assert params["force_model"] == "llm"  # what clients send as "model"
        assert params["host"] == "0.0.0.0"
        assert params["port"] == 8000
        if flags == ["flash-attention"]:
            assert params["attn_implementation"] == "flash_attention_2"

    def test_a_flag_of_the_catalogue_with_its_own_args_uses_them(self) -> None:
        raw = body(
            {"kind": "vllm"},
            startup={"optimizations": [{"name": "enforce-eager", "args": ["--enforce-eager=1"]}]},
        )
        spec = parse_spec(raw)
        args, _ = engine_flag_definition(spec, spec.startup.optimizations[0], SETTINGS)
        assert args == ["--enforce-eager=1"]

    def test_custom_engine_runs_its_command_with_expandable_paths(self) -> None:
        serve = worker(render(example("engine-custom")))
        assert serve["command"] == ["text-generation-launcher"]
        assert "$(GLOWPLUG_MODEL_DIR)" in serve["args"]  # expanded by the kubelet
        assert serve["ports"][0]["containerPort"] == 8080
        assert serve["args"][-2:] == ["--cuda-graphs", "0"]  # the custom flag


class TestRefusals:
    @pytest.mark.parametrize(
        ("raw", "field", "words"),
        [
            (
                body({"kind": "vllm"}, startup={"optimizations": [{"name": "fast-load"}]}),
                "spec.startup.optimizations[0].name",
                "engine vllm knows prefetch-page-cache, enforce-eager",
            ),
            (
                body({"kind": "sglang"}, startup={"optimizations": [{"name": "mystery"}]}),
                "spec.startup.optimizations[0]",
                "a custom flag needs env or args",
            ),
            (body({"kind": "custom"}, image={"worker": "x:1"}), "spec.engine.command", "command"),
            (
                body({"kind": "custom", "command": ["/server"]}),
                "spec.image.worker",
                "needs the image",
            ),
            (body({"command": ["python3"]}), "spec.engine.command", "builtin engine"),
            (
                body({"kind": "vllm"}, model={"source": "hf://o/m", "task": "embed"}),
                "spec.model.task",
                "builtin engine only",
            ),
            (body({"kind": "vllm", "readinessPath": "health"}), "spec.engine.readinessPath", "/"),
        ],
        ids=[
            "builtin-flag-on-vllm",
            "unknown-flag",
            "custom-without-command",
            "custom-without-image",
            "builtin-with-command",
            "embed-on-vllm",
            "relative-probe-path",
        ],
    )
    def test_refused_naming_the_field(self, raw: dict[str, Any], field: str, words: str) -> None:
        with pytest.raises(InvalidSpec) as error:
            parse_spec(raw)
        assert error.value.field == field
        assert words in error.value.message

    def test_prefetch_flags_apply_to_every_engine(self) -> None:
        for kind in ("vllm", "sglang"):
            raw = body({"kind": kind}, startup={"optimizations": [{"name": "prefetch-page-cache"}]})
            assert "prefetch-page-cache" in env(prefetch(render(raw)))["GLOWPLUG_OPTIMIZATIONS"]


TS_FLAGS = [
    FlagDefinition("flash-attention", ("--attn-implementation", "flash_attention_2")),
    FlagDefinition("verbose", ("--log-level", "info")),
]


class TestSignatures:
    def test_transformers_flash_attention_failure_blames_the_flag(self) -> None:
        """The last 2 KiB of a real `transformers serve` start with flash_attention_2 on a CPU:
        what the kubelet puts in the termination message."""
        tail = (LOGS / "transformers-serve-flash-attention.txt").read_text()
        assert len(tail.encode()) <= 2048
        found = blame(tail, "transformers-serve", TS_FLAGS)
        assert found is not None
        assert found[0] == "flash-attention"
        assert "FlashAttention2 has been toggled on" in found[1]

    def test_a_refused_option_blames_the_flag_that_added_it(self) -> None:
        flags = [FlagDefinition("a", ("--fast",)), FlagDefinition("b", ("--no-such-option",))]
        text = "Usage: x\nError: No such option '--no-such-option'.\n"
        assert blame(text, "transformers-serve", flags) == (
            "b",
            "Error: No such option '--no-such-option'.",
        )
        argparse = "vllm serve: error: unrecognized arguments: --no-such-option\n"
        assert blame(argparse, "vllm", flags) is not None

    def test_a_real_typer_refusal_keeps_its_error_line_out_of_reach(self) -> None:
        """A refused option makes transformers print its whole option list after the error: the
        kubelet's 2 KiB tail does not hold the error line, and nothing is blamed (bisection)."""
        full = (LOGS / "transformers-serve-no-such-option.txt").read_bytes()
        tail = full[-2048:].decode(errors="replace")
        flags = [FlagDefinition("bad", ("--no-such-option",)), *TS_FLAGS]
        assert blame(full.decode(), "transformers-serve", flags) is not None
        assert blame(tail, "transformers-serve", flags) is None

    def test_known_signatures_and_env_names(self) -> None:
        vllm = [
            FlagDefinition("forkserver", env={"VLLM_WORKER_MULTIPROC_METHOD": "forkserver"}),
            FlagDefinition("enforce-eager", ("--enforce-eager",)),
        ]
        cuda = "RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA ..."
        assert blame(cuda, "vllm", vllm) == ("forkserver", cuda)
        env_line = "ValueError: VLLM_WORKER_MULTIPROC_METHOD must be fork or spawn"
        assert blame(env_line, "vllm", vllm) == ("forkserver", env_line)
        # vLLM #40331, the failure that started glowplug: an import raced on a thread.
        race = (
            "ImportError: cannot import name 'GenerationConfig' from partially initialized "
            "module 'transformers' (most likely due to a circular import)"
        )
        builtin = [FlagDefinition("background-import"), FlagDefinition("fast-load")]
        assert blame(race, "builtin", builtin) == ("background-import", race)

    def test_lines_naming_no_flag_or_two_flags_blame_none(self) -> None:
        assert blame("Killed\n", "vllm", TS_FLAGS) is None
        both = [FlagDefinition("a", ("--x",)), FlagDefinition("b", ("--x",))]
        assert blame("error: unrecognized arguments: --x", "vllm", both) is None
        assert blame(None, "vllm", both) is None

    def test_last_log_line_drops_box_drawing(self) -> None:
        assert last_log_line("a\n│ Error: bad │\n╰──────╯\n") == "Error: bad"


def crashed_pod(message: str, flags: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "llm-1",
            "uid": "p-1",
            "creationTimestamp": "2026-11-30T11:50:00Z",
            "annotations": {"glowplug.dev/optimizations": flags},
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": "2026-11-30T11:50:00Z",
                }
            ],
            "containerStatuses": [
                {
                    "name": "worker",
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": message}
                    },
                }
            ],
        },
    }


def decide_after_crash(log: str) -> Decision:
    """The decision on one transformers-serve pod whose worker crashed with `log` as its
    termination message, running the flags of TS_FLAGS."""
    pod = attribute(
        observe_pod(crashed_pod(log, "flash-attention,verbose"), NOW),
        "transformers-serve",
        TS_FLAGS,
    )
    return decide(
        spec_flags=["flash-attention", "verbose"],
        policy="Automatic",
        flag_states=(),
        rollout=Rollout(),
        pods=[pod],
        progress=None,
        budget_seconds=300,
        retry_token=None,
        now=NOW,
    )


class TestDecisionFromLogs:
    def test_the_flag_the_log_names_is_rolled_back_with_the_line_quoted(self) -> None:
        decision = decide_after_crash((LOGS / "transformers-serve-flash-attention.txt").read_text())
        assert decision.effective_flags == ("verbose",)
        (rollback,) = decision.rollbacks
        assert (rollback.flag, rollback.reason) == ("flash-attention", "StartupFailed")
        assert any("FlashAttention2 has been toggled on" in e.message for e in decision.events)

    def test_without_a_named_flag_the_event_quotes_the_last_line_and_bisection_starts(
        self,
    ) -> None:
        decision = decide_after_crash("loading\nSegmentation fault\n")
        assert decision.rollbacks == ()
        (event,) = [e for e in decision.events if e.reason == "BisectingOptimizations"]
        assert "Segmentation fault" in event.message


def test_every_engine_has_probes_and_a_command() -> None:
    for kind, engine in ENGINES.items():
        assert engine.readiness_path.startswith("/"), kind
        assert engine.command or kind == "custom", kind


def test_vllm_start_phases_from_its_own_log_lines() -> None:
    """Lines in the formats of vLLM's own logger calls (model runner, compile monitor, core)."""
    from glowplug_operator.engines import phases_from_log

    log = (LOGS / "vllm-startup.txt").read_text()
    assert phases_from_log("vllm", log) == {
        "load": 5.384,
        "compile": 21.13,
        "graphCapture": 8.0,
        "engineInit": 39.86,
    }
    assert phases_from_log("vllm", "nothing here") == {}
    assert phases_from_log("transformers-serve", log) == {}
