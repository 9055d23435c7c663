"""Ports: a free one for tests, and a clear refusal of a taken one."""

from __future__ import annotations

import socket

from pipeline.config import SettingError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def ensure_port_free(setting: str, host: str, port: int) -> None:
    """Raise :class:`SettingError` naming ``setting`` if TCP ``host:port`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _bind_or_refuse(probe, setting, host, port, "port")


def ensure_udp_port_free(setting: str, host: str, port: int) -> None:
    """Raise :class:`SettingError` naming ``setting`` if UDP ``host:port`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        _bind_or_refuse(probe, setting, host, port, "UDP port")


def _bind_or_refuse(
    probe: socket.socket, setting: str, host: str, port: int, what: str
) -> None:
    try:
        probe.bind((host, port))
    except OSError as error:
        flag = "--" + setting.replace("_", "-")
        message = (
            f"{what} {port} on {host} is already in use ({error.strerror}); "
            f"choose another with {flag} or RASTRO_{setting.upper()}"
        )
        raise SettingError(message) from error
