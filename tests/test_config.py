"""Settings resolution: flag over environment over file over default."""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

import pytest

from pipeline.config import (
    SettingError,
    add_setting_flags,
    flags_from_namespace,
    load_settings,
    parse_networks,
    redact_url,
)
from pipeline.ports import ensure_port_free


class TestLoadSettings:
    def test_defaults_when_nothing_given(self) -> None:
        settings = load_settings({}, environ={})

        assert settings.http_port == 8080
        assert settings.osmand_port == 5055
        assert settings.kafka == ""

    def test_flag_beats_environment_beats_file(self, tmp_path: Path) -> None:
        config = tmp_path / "rastro.toml"
        config.write_text("http_port = 7000\ndashboard_port = 7001\nmqtt_port = 7002\n")
        environ = {
            "RASTRO_CONFIG": str(config),
            "RASTRO_HTTP_PORT": "7100",
            "RASTRO_DASHBOARD_PORT": "7101",
        }

        settings = load_settings({"http_port": "7200"}, environ=environ)

        assert settings.http_port == 7200
        assert settings.dashboard_port == 7101
        assert settings.mqtt_port == 7002

    def test_flags_parse_from_command_line(self) -> None:
        parser = argparse.ArgumentParser()
        add_setting_flags(parser)

        namespace = parser.parse_args(["--kafka", "k1:9092", "--http-port", "81"])
        settings = load_settings(flags_from_namespace(namespace), environ={})

        assert settings.kafka == "k1:9092"
        assert settings.http_port == 81

    def test_data_folder_is_a_path_from_any_source(self, tmp_path: Path) -> None:
        settings = load_settings({}, environ={"RASTRO_DATA": str(tmp_path)})

        assert isinstance(settings.data, Path)
        assert settings.data.resolve() == tmp_path.resolve()

    def test_bad_port_names_the_setting(self) -> None:
        with pytest.raises(SettingError, match="'http_port' must be a whole number"):
            load_settings({}, environ={"RASTRO_HTTP_PORT": "eighty"})

    def test_webhook_networks_checked_and_canonical(self) -> None:
        environ = {"RASTRO_WEBHOOK_ALLOWED_NETWORKS": " 10.1.2.3/8 ,fd00::/8,"}

        settings = load_settings({}, environ=environ)

        assert settings.webhook_allowed_networks == "10.0.0.0/8,fd00::/8"
        assert parse_networks(settings.webhook_allowed_networks) == (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("fd00::/8"),
        )

    def test_bad_webhook_network_names_the_setting(self) -> None:
        environ = {"RASTRO_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}

        with pytest.raises(
            SettingError, match=r"'webhook_allowed_networks': not a network.*'intranet'"
        ):
            load_settings({}, environ=environ)

    def test_unknown_file_key_is_refused(self, tmp_path: Path) -> None:
        config = tmp_path / "rastro.toml"
        config.write_text("htp_port = 1\n")

        with pytest.raises(SettingError, match=r"unknown keys: \['htp_port'\]"):
            load_settings({"config": str(config)}, environ={})

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SettingError, match="does not exist"):
            load_settings({"config": str(tmp_path / "nope.toml")}, environ={})

    def test_public_dict_hides_secrets(self) -> None:
        settings = load_settings(
            {"postgres": "postgresql://rastro:hunter2@db/rastro"},
            environ={"RASTRO_ADMIN_PASSWORD": "s3cret"},
        )

        public = str(settings.public_dict())

        assert "hunter2" not in public
        assert "s3cret" not in public
        assert settings.admin_password == "s3cret"


def test_redact_url_keeps_user_and_host() -> None:
    assert redact_url("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_taken_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(SettingError, match="--http-port or RASTRO_HTTP_PORT"):
            ensure_port_free("http_port", "127.0.0.1", port)
