"""Settings.from_env: the operator's GLOWPLUG_* environment (the chart's values) read once and
checked on load, so a bad value stops the operator at start with the variable's name."""

from __future__ import annotations

import logging

import pytest
from glowplug_operator.settings import Settings, SettingsError


class TestSettingsFromEnv:
    def test_defaults_without_any_variable(self) -> None:
        settings = Settings.from_env({"PATH": "/usr/bin", "HOME": "/root"})
        assert settings.worker_image == "ghcr.io/glowplug/worker:0.1.0"
        assert settings.namespaces == ()  # all namespaces
        assert settings.default_budget_seconds == 900
        assert settings.metrics_port == 9090
        assert settings.field_manager == "glowplug"
        assert settings.cache_mount_path == "/models"
        assert settings.reconcile_workers == 16
        assert settings.resync_seconds == 300.0
        assert settings.log_level == "INFO"
        assert settings.log_format == "text"

    def test_every_variable_is_read(self) -> None:
        settings = Settings.from_env(
            {
                "GLOWPLUG_WORKER_IMAGE": "registry.local/worker:dev",
                "GLOWPLUG_NAMESPACES": "ml",
                "GLOWPLUG_DEFAULT_BUDGET_SECONDS": "1200",
                "GLOWPLUG_METRICS_PORT": "0",
                "GLOWPLUG_FIELD_MANAGER": "glowplug-test",
                "GLOWPLUG_CACHE_MOUNT_PATH": "/weights",
                "GLOWPLUG_RECONCILE_WORKERS": "4",
                "GLOWPLUG_RESYNC_SECONDS": "30.5",
                "GLOWPLUG_LOG_LEVEL": "DEBUG",
                "GLOWPLUG_LOG_FORMAT": "JSON",
            }
        )
        assert settings == Settings(
            worker_image="registry.local/worker:dev",
            namespaces=("ml",),
            default_budget_seconds=1200,
            metrics_port=0,
            field_manager="glowplug-test",
            cache_mount_path="/weights",
            reconcile_workers=4,
            resync_seconds=30.5,
            log_level="DEBUG",
            log_format="json",
        )

    def test_reads_the_process_environment_by_default(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("GLOWPLUG_DEFAULT_BUDGET_SECONDS", "600")
        assert Settings.from_env().default_budget_seconds == 600

    def test_unknown_and_foreign_variables_are_ignored(self) -> None:
        settings = Settings.from_env(
            {"GLOWPLUG_NO_SUCH_THING": "x", "WORKER_IMAGE": "other:1", "glowplug_namespaces": "a"}
        )
        assert settings == Settings()

    @pytest.mark.parametrize(
        ("value", "namespaces"),
        [
            ("a, b,,", ("a", "b")),
            ("ml", ("ml",)),
            (" ml , serving ", ("ml", "serving")),
            ("", ()),
            (" , ", ()),
        ],
    )
    def test_namespaces_are_a_comma_separated_list(
        self, value: str, namespaces: tuple[str, ...]
    ) -> None:
        assert Settings.from_env({"GLOWPLUG_NAMESPACES": value}).namespaces == namespaces

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("GLOWPLUG_DEFAULT_BUDGET_SECONDS", "fifteen minutes"),
            ("GLOWPLUG_DEFAULT_BUDGET_SECONDS", "10"),
            ("GLOWPLUG_DEFAULT_BUDGET_SECONDS", "100000"),
            ("GLOWPLUG_METRICS_PORT", "70000"),
            ("GLOWPLUG_METRICS_PORT", "-1"),
            ("GLOWPLUG_RECONCILE_WORKERS", "0"),
            ("GLOWPLUG_RESYNC_SECONDS", "1"),
            ("GLOWPLUG_WORKER_IMAGE", ""),
            ("GLOWPLUG_LOG_FORMAT", "logfmt"),
        ],
    )
    def test_a_bad_value_names_the_variable(self, variable: str, value: str) -> None:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({variable: value, "GLOWPLUG_NAMESPACES": "ml"})
        message = str(caught.value)
        assert message.startswith(f"{variable}: ")
        assert repr(value) in message

    @pytest.mark.parametrize("value", ["verbose", "debug"])
    def test_a_log_level_is_usable_or_refused(self, value: str) -> None:
        try:
            settings = Settings.from_env({"GLOWPLUG_LOG_LEVEL": value})
        except SettingsError as error:
            assert str(error).startswith("GLOWPLUG_LOG_LEVEL: ")
        else:
            logging.getLogger("glowplug.test-settings").setLevel(settings.log_level)

    def test_metrics_port_cannot_take_the_health_port(self) -> None:
        with pytest.raises(SettingsError, match=r"^GLOWPLUG_METRICS_PORT: "):
            Settings.from_env({"GLOWPLUG_METRICS_PORT": "8080"})
