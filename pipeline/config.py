"""Settings for every Rastro process: flags, ``RASTRO_*`` variables, a TOML file.

A setting is looked up in that order: the command-line flag, then the environment
variable, then the configuration file (``--config FILE`` or ``RASTRO_CONFIG``), then
the default.  An address left empty means "start the embedded service".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SettingError(ValueError):
    """A setting has a value Rastro cannot use; the message names the setting."""


def _setting(default: Any, help_text: str, *, flag: bool = True) -> Any:
    return field(default=default, metadata={"help": help_text, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """Everything a Rastro process needs to know about where things are."""

    data: Path = _setting(Path(".rastro"), "folder for embedded services' data")
    bind: str = _setting(
        "127.0.0.1", "address the HTTP, OsmAnd and dashboard ports bind"
    )
    http_port: int = _setting(8080, "port of the REST API and WebSocket")
    dashboard_port: int = _setting(5006, "port of the Panel dashboard")
    osmand_port: int = _setting(5055, "port of the OsmAnd / Traccar Client protocol")
    mqtt_port: int = _setting(1883, "port of the embedded MQTT broker")
    kafka_port: int = _setting(9092, "port of the embedded Kafka broker")
    kafka: str = _setting(
        "", "Kafka bootstrap servers HOST:PORT[,...]; empty: embedded"
    )
    postgres: str = _setting("", "PostgreSQL DSN postgresql://...; empty: embedded")
    redis: str = _setting("", "Redis URL redis://...; empty: embedded")
    mqtt: str = _setting("", "MQTT broker URL mqtt://HOST:PORT; empty: embedded")
    flink: str = _setting("", "Flink JobManager HOST:PORT; empty: local mini-cluster")
    kafka_partitions: int = _setting(8, "partitions of the positions topic")
    h3_resolution: int = _setting(9, "H3 resolution fixes are indexed at")
    checkpoint_interval: int = _setting(
        10, "seconds between checkpoints of the streaming job"
    )
    map_style: str = _setting("", "MapLibre style URL for street maps; empty: offline")
    admin_password: str = _setting(
        "", "password of 'admin' on first start; empty: random", flag=False
    )

    def public_dict(self) -> dict[str, Any]:
        """Return the settings without secrets, fit for a log line."""
        values = dataclasses.asdict(self)
        values["admin_password"] = "***" if self.admin_password else ""
        values["postgres"] = redact_url(self.postgres)
        values["redis"] = redact_url(self.redis)
        values["mqtt"] = redact_url(self.mqtt)
        values["data"] = str(self.data)
        return values


def redact_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host``; logs never see it."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url

    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def env_name(name: str) -> str:
    """The environment variable of a setting: ``http_port`` -> ``RASTRO_HTTP_PORT``."""
    return f"RASTRO_{name.upper()}"


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting, plus ``--config``, to a command's parser."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file of settings (RASTRO_CONFIG)",
    )
    for spec in dataclasses.fields(Settings):
        if not spec.metadata["flag"]:
            continue
        parser.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            default=None,
            metavar=spec.name.upper(),
            help=f"{spec.metadata['help']} "
            f"({env_name(spec.name)}, default {spec.default})",
        )


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve each setting: flag, then environment, then the file, then default."""
    flags = dict(flags or {})
    environ = os.environ if environ is None else environ
    config_path = flags.get("config") or environ.get("RASTRO_CONFIG")
    from_file = _read_config_file(Path(config_path)) if config_path else {}

    values: dict[str, Any] = {}
    for spec in dataclasses.fields(Settings):
        raw = _first_given(
            flags.get(spec.name),
            environ.get(env_name(spec.name)),
            from_file.get(spec.name),
        )
        if raw is not None:
            values[spec.name] = _convert(spec.name, raw, type(spec.default))
    return Settings(**values)


def _first_given(*candidates: Any) -> Any:
    for candidate in candidates:
        if candidate is not None:
            return candidate
    return None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            content = tomllib.load(handle)
    except FileNotFoundError as error:
        message = f"configuration file {str(path)!r} does not exist"
        raise SettingError(message) from error
    except tomllib.TOMLDecodeError as error:
        message = f"configuration file {str(path)!r} is not valid TOML: {error}"
        raise SettingError(message) from error

    known = {spec.name for spec in dataclasses.fields(Settings)}
    unknown = sorted(set(content) - known)
    if unknown:
        message = f"configuration file {str(path)!r} has unknown keys: {unknown}"
        raise SettingError(message)
    return content


def _convert(name: str, raw: Any, kind: type) -> Any:
    if kind is int:
        try:
            number = int(raw)
        except (TypeError, ValueError) as error:
            message = f"setting {name!r} must be a whole number, got {raw!r}"
            raise SettingError(message) from error
        if name.endswith("_port") and not 0 <= number <= 65535:
            message = f"setting {name!r} must be a port from 0 to 65535, got {number!r}"
            raise SettingError(message)
        return number
    if issubclass(kind, Path):
        return Path(str(raw))
    return str(raw)


def flags_from_namespace(namespace: argparse.Namespace) -> dict[str, Any]:
    """The flags a user actually gave, without argparse's ``None`` placeholders."""
    return {key: value for key, value in vars(namespace).items() if value is not None}


def settings_names() -> Sequence[str]:
    """Names of all settings, for the README table and ``--help``."""
    return [spec.name for spec in dataclasses.fields(Settings)]
