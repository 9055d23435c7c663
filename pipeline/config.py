"""Settings for every Rastro process: flags, ``RASTRO_*`` variables, a TOML file.

A setting is looked up in that order: the command-line flag, then the environment
variable, then the configuration file (``--config FILE`` or ``RASTRO_CONFIG``), then
the default.  An address left empty means "start the embedded service".
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final


class SettingError(ValueError):
    """A setting has a value Rastro cannot use; the message names the setting."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _setting(default: Any, help_text: str, *, flag: bool = True) -> Any:
    return field(default=default, metadata={"help": help_text, "flag": flag})


@dataclass(frozen=True)
class Settings:
    """Everything a Rastro process needs to know about where things are."""

    data: Path = _setting(Path(".rastro"), "folder for embedded services' data")
    bind: str = _setting(
        "127.0.0.1", "address the HTTP, OsmAnd, tracker and dashboard ports bind"
    )
    http_port: int = _setting(8080, "port of the REST API and WebSocket")
    dashboard_port: int = _setting(5006, "port of the Panel dashboard")
    osmand_port: int = _setting(5055, "port of the OsmAnd / Traccar Client protocol")
    mqtt_port: int = _setting(1883, "port of the embedded MQTT broker")
    kafka_port: int = _setting(9092, "port of the embedded Kafka broker")
    teltonika_port: int = _setting(5027, "Teltonika port, TCP and UDP; 0: off")
    gt06_port: int = _setting(5023, "GT06 / Concox port, TCP; 0: off")
    h02_port: int = _setting(5013, "H02 port, TCP and UDP; 0: off")
    gps103_port: int = _setting(5001, "GPS103 (Coban) port, TCP and UDP; 0: off")
    tk103_port: int = _setting(5002, "TK103 port, TCP; 0: off")
    gl200_port: int = _setting(5004, "Queclink GL200 port, TCP and UDP; 0: off")
    meitrack_port: int = _setting(5020, "Meitrack port, TCP; 0: off")
    watch_port: int = _setting(5093, "watch (3G / SeTracker) port, TCP; 0: off")
    suntech_port: int = _setting(5011, "Suntech port, TCP and UDP; 0: off")
    detect_port: int = _setting(
        5000, "TCP port that detects any tracker protocol; 0: off"
    )
    owntracks_port: int = _setting(5144, "OwnTracks HTTP port; 0: off")
    coap_port: int = _setting(5683, "CoAP port (UDP) for POST /positions; 0: off")
    register_unknown: bool = _setting(
        False, "register unknown trackers to admin instead of refusing them"
    )
    device_rate: float = _setting(100.0, "messages per second allowed per device")
    tracker_idle_timeout: float = _setting(
        600.0, "seconds a silent tracker connection stays open"
    )
    kafka: str = _setting(
        "", "Kafka bootstrap servers HOST:PORT[,...]; empty: embedded"
    )
    postgres: str = _setting("", "PostgreSQL DSN postgresql://...; empty: embedded")
    redis: str = _setting("", "Redis URL redis://...; empty: embedded")
    mqtt: str = _setting("", "MQTT broker URL mqtt://HOST:PORT; empty: embedded")
    flink: str = _setting("", "Flink JobManager HOST:PORT; empty: local mini-cluster")
    kafka_partitions: int = _setting(8, "partitions of the positions topic")
    h3_resolution: int = _setting(9, "H3 resolution fixes are indexed at")
    h3_rollup_resolution: int = _setting(
        5, "coarsest H3 resolution the hourly aggregates are rolled up to"
    )
    h3_refresh_interval: float = _setting(
        60.0, "seconds between refreshes of the hourly H3 aggregates"
    )
    checkpoint_interval: int = _setting(
        10, "seconds between checkpoints of the streaming job"
    )
    lateness: float = _setting(
        10.0,
        "seconds a fix may come out of order and still be used in order for trips, "
        "geofences and alerts; a later one is stored and its window recomputed",
    )
    motion_settings: str = _setting(
        "",
        "JSON object of motion settings for every device, with the keys of group "
        "attributes (filters, trips, dwell, alerts, speedLimit); group and device "
        "attributes win over it, field by field",
    )
    map_style: str = _setting("", "MapLibre style URL for street maps; empty: offline")
    smtp_host: str = _setting("", "SMTP server for e-mail notifications; empty: off")
    smtp_port: int = _setting(587, "SMTP server port")
    smtp_user: str = _setting("", "SMTP login; empty: no login")
    smtp_from: str = _setting("", "sender of notification e-mails (rastro@localhost)")
    smtp_starttls: bool = _setting(True, "upgrade the SMTP connection with STARTTLS")
    smtp_implicit_tls: bool = _setting(
        False, "SMTPS: TLS from the first byte (port 465), instead of STARTTLS"
    )
    smtp_password: str = _setting("", "SMTP password (a secret)", flag=False)
    webhook_allowed_networks: str = _setting(
        "",
        "comma-separated networks (CIDR) webhooks may reach besides public "
        "addresses, e.g. 10.0.0.0/8; empty: public addresses only",
    )
    admin_password: str = _setting(
        "", "password of 'admin' on first start; empty: random", flag=False
    )

    def public_dict(self) -> dict[str, Any]:
        """Return the settings without secrets, fit for a log line."""
        values = dataclasses.asdict(self)
        values["admin_password"] = "***" if self.admin_password else ""
        values["smtp_password"] = "***" if self.smtp_password else ""
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
        help_text = (
            f"{spec.metadata['help']} ({env_name(spec.name)}, default {spec.default})"
        )
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(spec.default, bool):
            # --name sets it, --no-name clears it; neither leaves it to the
            # variable, the file or the default.
            parser.add_argument(
                flag,
                dest=spec.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        parser.add_argument(
            flag,
            dest=spec.name,
            default=None,
            metavar=spec.name.upper(),
            help=help_text,
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


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _convert(name: str, raw: Any, kind: type) -> Any:
    if name == "motion_settings":
        return _motion_text(raw)
    if name == "webhook_allowed_networks":
        return _networks_text(name, raw)
    if kind is bool:
        return _boolean(name, raw)
    if kind is float:
        return _real(name, raw)
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


def _boolean(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    message = f"setting {name!r} must be true or false (1/0, yes/no), got {raw!r}"
    raise SettingError(message)


def _real(name: str, raw: Any) -> float:
    try:
        number = float(raw)
    except (TypeError, ValueError) as error:
        message = f"setting {name!r} must be a number, got {raw!r}"
        raise SettingError(message) from error
    if isinstance(raw, bool) or not math.isfinite(number) or number <= 0:
        message = f"setting {name!r} must be a positive number, got {raw!r}"
        raise SettingError(message)
    return number


#: The keys of ``motion_settings``: those of group attributes that the streaming
#: job reads (:mod:`pipeline.stream.profiles`), and which of them hold an object.
MOTION_KEYS: Final = ("filters", "trips", "dwell", "alerts", "speedLimit")
_MOTION_OBJECTS: Final = frozenset({"filters", "trips", "dwell", "alerts"})


def parse_motion_settings(raw: Any) -> dict[str, Any]:
    """Read ``motion_settings``: JSON text (or a TOML table) of a settings object.

    Empty text is no settings.  Only the shape is checked here, so that a typo stops
    Rastro at start rather than doing nothing: an object whose keys are
    :data:`MOTION_KEYS`, each concern an object.  The values are checked by the
    streaming job, which falls back to the defaults for one it refuses.

    Raises
    ------
    SettingError
        Naming ``motion_settings``, for bad JSON, another type, or an unknown key.
    """
    if isinstance(raw, str) and not raw.strip():
        return {}
    try:
        loaded = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as error:
        message = f"setting 'motion_settings' is not valid JSON: {error}"
        raise SettingError(message) from error
    if not isinstance(loaded, Mapping):
        message = f"setting 'motion_settings' must be a JSON object, got {raw!r}"
        raise SettingError(message)

    unknown = sorted(set(loaded) - set(MOTION_KEYS))
    if unknown:
        message = (
            f"setting 'motion_settings' has unknown keys {unknown}; "
            f"known: {list(MOTION_KEYS)}"
        )
        raise SettingError(message)
    for key in sorted(_MOTION_OBJECTS & set(loaded)):
        if not isinstance(loaded[key], Mapping):
            message = (
                f"setting 'motion_settings' needs an object for {key!r}, "
                f"got {loaded[key]!r}"
            )
            raise SettingError(message)
    return dict(loaded)


def _motion_text(raw: Any) -> str:
    """``motion_settings`` as one line of JSON, whether given as text or a table."""
    settings = parse_motion_settings(raw)
    if not settings:
        return ""
    try:
        return json.dumps(settings, allow_nan=False)
    except (TypeError, ValueError) as error:
        message = f"setting 'motion_settings' must hold only JSON values: {error}"
        raise SettingError(message) from error


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """The networks of a comma-separated list in CIDR form; empty text gives none.

    >>> parse_networks("10.0.0.0/8, fd00::/8")
    (IPv4Network('10.0.0.0/8'), IPv6Network('fd00::/8'))
    >>> parse_networks("10.0.0.0/33")
    Traceback (most recent call last):
    ...
    ValueError: not a network in CIDR form (such as 10.0.0.0/8): '10.0.0.0/33'
    """
    networks: list[IPNetwork] = []
    for part in text.split(","):
        written = part.strip()
        if not written:
            continue
        try:
            networks.append(ipaddress.ip_network(written, strict=False))
        except ValueError:
            message = f"not a network in CIDR form (such as 10.0.0.0/8): {written!r}"
            raise ValueError(message) from None
    return tuple(networks)


def _networks_text(name: str, raw: Any) -> str:
    """A list of networks, checked and written back in canonical form."""
    try:
        networks = parse_networks(str(raw))
    except ValueError as error:
        raise SettingError(f"setting {name!r}: {error}") from None
    return ",".join(str(network) for network in networks)


def flags_from_namespace(namespace: argparse.Namespace) -> dict[str, Any]:
    """The flags a user actually gave, without argparse's ``None`` placeholders."""
    return {key: value for key, value in vars(namespace).items() if value is not None}


def settings_names() -> Sequence[str]:
    """Names of all settings, for the README table and ``--help``."""
    return [spec.name for spec in dataclasses.fields(Settings)]
