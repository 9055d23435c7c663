"""The ``rastro`` command: ``demo``, ``serve``, ``simulate``, ``decode``, ``test``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import SettingError, add_setting_flags, flags_from_namespace
from pipeline.decode import add_decode_arguments

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def build_parser() -> argparse.ArgumentParser:
    """The command line, one subcommand per thing a user does."""
    parser = argparse.ArgumentParser(
        prog="rastro", description="Real-time GPS fleet tracking."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="start everything on embedded services, with simulated vehicles"
    )
    add_setting_flags(demo)
    demo.add_argument("--devices", type=int, default=200, help="simulated vehicles")

    serve = commands.add_parser("serve", help="run Rastro without the simulator")
    add_setting_flags(serve)

    simulate = commands.add_parser(
        "simulate", help="drive simulated vehicles against a running Rastro"
    )
    simulate.add_argument("--devices", type=int, default=100, help="how many vehicles")
    simulate.add_argument("--via", choices=["mqtt", "http"], default="http")
    simulate.add_argument(
        "--server", default="http://127.0.0.1:8080", help="API URL, or mqtt://HOST:PORT"
    )
    simulate.add_argument("--token", default=None, help="bearer token (RASTRO_TOKEN)")
    simulate.add_argument("--center", default="40.4168,-3.7038", help="LAT,LON")
    simulate.add_argument("--interval", type=float, default=1.0, help="seconds per fix")
    simulate.add_argument("--duration", type=float, default=None, help="stop after s")
    simulate.add_argument(
        "--register",
        action="store_true",
        help="create the simulated devices through the API first",
    )
    simulate.add_argument("--user", default=None, help="log in as this user")
    simulate.add_argument(
        "--password", default=None, help="password for --user (RASTRO_PASSWORD)"
    )
    simulate.add_argument(
        "--format", choices=["json", "protobuf"], default="json", help="wire format"
    )
    simulate.add_argument(
        "--region", default="madrid", help="MQTT topic region: gps/REGION/ID"
    )
    simulate.add_argument("--seed", type=int, default=0, help="seed of the vehicles")
    simulate.add_argument(
        "--http2", action="store_true", help="speak HTTP/2 (h2c) instead of 1.1"
    )
    simulate.add_argument(
        "--batch-size", type=int, default=500, help="fixes per HTTP request"
    )
    simulate.add_argument(
        "--mqtt-window", type=int, default=100, help="MQTT messages awaiting PUBACK"
    )

    decode = commands.add_parser(
        "decode",
        help="decode a tracker's packets as the server would, and show its reply",
    )
    add_decode_arguments(decode)

    test = commands.add_parser("test", help="run the checks and the whole test suite")
    test.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="extra arguments for pytest"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    arguments = build_parser().parse_args(argv)
    try:
        if arguments.command == "test":
            return run_tests(arguments.pytest_args)
        if arguments.command == "decode":
            return run_decode(arguments)
        if arguments.command == "simulate":
            from pipeline.simulate import run_simulator_command

            return run_simulator_command(arguments)

        from pipeline.supervisor import run_rastro

        return run_rastro(
            flags_from_namespace(arguments),
            devices=arguments.devices if arguments.command == "demo" else 0,
        )
    except SettingError as error:
        print(f"rastro: {error}", file=sys.stderr)
        return 2


def run_decode(arguments: argparse.Namespace) -> int:
    """Print what ``rastro decode`` found; bad input is one line and exit code 2."""
    from pipeline.decode import DecodeInputError, decode_lines

    try:
        for line in decode_lines(arguments):
            print(line, flush=True)
    except DecodeInputError as error:
        print(f"rastro decode: {error}", file=sys.stderr)
        return 2
    return 0


def run_tests(pytest_args: Sequence[str]) -> int:
    """Lint, type-check, then run pytest; the first failing step decides the exit."""
    python = sys.executable
    steps = [
        [python, "-m", "ruff", "check", "."],
        [python, "-m", "ruff", "format", "--check", "."],
        [python, "-m", "mypy"],
        [python, "-m", "pytest", *(pytest_args or ["tests", "notebooks", "--nbmake"])],
    ]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for step in steps:
        print("rastro test:", " ".join(step[2:]), flush=True)
        result = subprocess.run(step, cwd=PROJECT_ROOT, env=env, check=False)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
