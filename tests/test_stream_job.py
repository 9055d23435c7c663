"""The streaming job's entry point, without running Flink: argv, DSN, checkpoints."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import SettingError, Settings, load_settings
from pipeline.stream.graph import _jdbc_ddl
from pipeline.stream.job import (
    POSTGRES_ENV,
    REDIS_ENV,
    _parse_args,
    jdbc_target,
    job_command,
    job_environment,
    latest_checkpoint,
    stream_addresses,
    write_password_file,
)

REQUIRED = [
    "--kafka",
    "127.0.0.1:9092",
    "--postgres",
    "postgresql://rastro:pw@127.0.0.1:5432/rastro",
    "--redis",
    "redis://127.0.0.1:6379/0",
]


class TestJobCommand:
    def test_job_command_runs_this_module(self, tmp_path: Path) -> None:
        settings = Settings(
            data=tmp_path, h3_resolution=8, checkpoint_interval=5, lateness=4.5
        )

        argv = job_command(settings, "k:1")

        assert argv[:3] == [sys.executable, "-m", "pipeline.stream.job"]
        assert argv[argv.index("--kafka") + 1] == "k:1"
        assert argv[argv.index("--data") + 1] == str(tmp_path.resolve())
        assert argv[argv.index("--h3-resolution") + 1] == "8"
        assert argv[argv.index("--checkpoint-interval") + 1] == "5"
        assert argv[argv.index("--lateness") + 1] == "4.5"
        assert "--flink" not in argv

    def test_job_command_keeps_secrets_off_the_command_line(
        self, tmp_path: Path
    ) -> None:
        """Another user of the host sees argv in ``ps``; passwords go by env."""
        argv = job_command(Settings(data=tmp_path), "k:1")
        env = job_environment("postgresql://u:s3cret@h/db", "redis://:pw@r:2/0")

        assert not any("s3cret" in part or "pw@" in part for part in argv)
        assert "--postgres" not in argv and "--redis" not in argv
        assert "s3cret" in env[POSTGRES_ENV] and "pw@" in env[REDIS_ENV]

    def test_parse_args_without_postgres_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.delenv(POSTGRES_ENV, raising=False)
        monkeypatch.delenv(REDIS_ENV, raising=False)

        with pytest.raises(SystemExit):
            _parse_args(["--kafka", "k:1", "--redis", "redis://r/0"])

        assert POSTGRES_ENV in capsys.readouterr().err

    def test_job_command_remote_flink(self, tmp_path: Path) -> None:
        settings = Settings(data=tmp_path, flink="jm.example:8081")

        argv = job_command(settings, "k:1")

        assert argv[argv.index("--flink") + 1] == "jm.example:8081"

    def test_job_command_parses_back(self, tmp_path: Path) -> None:
        settings = Settings(data=tmp_path)
        argv = job_command(settings, "k:1")

        dsn = "postgresql://u:s3cret@h/db"
        with pytest.MonkeyPatch.context() as patch:
            for name, value in job_environment(dsn, "redis://:pw@r:2/0").items():
                patch.setenv(name, value)
            options = _parse_args(argv[3:])

        assert options.kafka == "k:1"
        assert options.postgres == dsn
        assert options.redis == "redis://:pw@r:2/0"
        assert options.h3_resolution == 9
        assert options.checkpoint_interval == 10
        assert options.lateness == 10.0
        assert options.data == tmp_path.resolve()
        assert options.motion_settings == ""
        assert not options.from_beginning
        assert "--motion-settings" not in argv

    def test_job_command_motion_settings_round_trip(self, tmp_path: Path) -> None:
        """From the variable, as the supervisor loads it, to the job's options."""
        text = '{"filters": {"min_distance_m": 20},\n "speedLimit": 90}'
        settings = load_settings({"data": tmp_path}, {"RASTRO_MOTION_SETTINGS": text})

        argv = job_command(settings, "k:1")
        options = _parse_args([*argv[3:], *REQUIRED[2:]])

        assert json.loads(options.motion_settings) == json.loads(text)
        assert "\n" not in argv[argv.index("--motion-settings") + 1]


class TestParseArgs:
    def test_parse_args_bad_resolution(self) -> None:
        with pytest.raises(SettingError, match="h3_resolution must be from 0 to 15"):
            _parse_args([*REQUIRED, "--h3-resolution", "16"])

    def test_parse_args_bad_parallelism(self) -> None:
        with pytest.raises(SettingError, match="parallelism must be at least 1"):
            _parse_args([*REQUIRED, "--parallelism", "0"])

    def test_parse_args_bad_lateness(self) -> None:
        with pytest.raises(SettingError, match="lateness must be 0 seconds or more"):
            _parse_args([*REQUIRED, "--lateness", "-1"])

    def test_parse_args_bad_checkpoint_interval(self) -> None:
        with pytest.raises(SettingError, match="checkpoint_interval must be at least"):
            _parse_args([*REQUIRED, "--checkpoint-interval", "0"])

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('{"filters": {', "'motion_settings' is not valid JSON"),
            ("[1, 2]", "'motion_settings' must be a JSON object, got '\\[1, 2\\]'"),
            ('"filters"', "'motion_settings' must be a JSON object"),
        ],
    )
    def test_parse_args_bad_motion_settings(self, text: str, message: str) -> None:
        with pytest.raises(SettingError, match=message):
            _parse_args([*REQUIRED, "--motion-settings", text])


class TestMotionSettings:
    """``motion_settings`` is refused at start-up, before any process is spawned."""

    def test_motion_settings_default_is_empty(self) -> None:
        assert load_settings({}, {}).motion_settings == ""

    def test_motion_settings_blank_is_no_settings(self) -> None:
        settings = load_settings({}, {"RASTRO_MOTION_SETTINGS": "  "})

        assert settings.motion_settings == ""

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{'trips': {}}", "'motion_settings' is not valid JSON: Expecting"),
            ("42", "'motion_settings' must be a JSON object, got '42'"),
            ("null", "'motion_settings' must be a JSON object, got 'null'"),
            (
                '{"filter": {"max_hdop": 5}}',
                "'motion_settings' has unknown keys \\['filter'\\]; known:",
            ),
            (
                '{"trips": "ignition"}',
                "'motion_settings' needs an object for 'trips', got 'ignition'",
            ),
            ('{"speedLimit": NaN}', "'motion_settings' must hold only JSON values"),
        ],
    )
    def test_motion_settings_refused_at_start(self, text: str, message: str) -> None:
        with pytest.raises(SettingError, match=message):
            load_settings({}, {"RASTRO_MOTION_SETTINGS": text})

    def test_motion_settings_from_a_toml_table(self, tmp_path: Path) -> None:
        config = tmp_path / "rastro.toml"
        config.write_text(
            "[motion_settings]\n"
            "speedLimit = 80\n"
            "trips = { rule = 'ignition' }\n"
            "alerts.offline.after_s = 900\n"
        )

        settings = load_settings({"config": config}, {})

        assert json.loads(settings.motion_settings) == {
            "speedLimit": 80,
            "trips": {"rule": "ignition"},
            "alerts": {"offline": {"after_s": 900}},
        }

    def test_motion_settings_toml_date_refused(self, tmp_path: Path) -> None:
        config = tmp_path / "rastro.toml"
        config.write_text("[motion_settings.trips]\nrule = 2024-01-01\n")

        with pytest.raises(SettingError, match="must hold only JSON values"):
            load_settings({"config": config}, {})


class TestJdbcTarget:
    def test_jdbc_target_splits_dsn(self) -> None:
        target = jdbc_target("postgresql://rastro:s%40cret@db.local:6543/fleet")

        assert target.url.startswith("jdbc:postgresql://db.local:6543/fleet?")
        assert "stringtype=unspecified" in target.url
        assert target.url.endswith("&user=rastro") and "cret" not in target.url
        assert target.username == "rastro"
        assert target.password == "s@cret"

    def test_jdbc_target_default_port(self) -> None:
        assert "//db.local:5432/fleet" in jdbc_target("postgres://u@db.local/fleet").url

    def test_jdbc_target_refuses_socket_dsn(self) -> None:
        with pytest.raises(SettingError, match="needs a host"):
            jdbc_target("postgresql:///rastro?host=/tmp/pg")

    def test_jdbc_target_refuses_other_scheme(self) -> None:
        with pytest.raises(SettingError, match="must be a postgresql:// URL"):
            jdbc_target("mysql://u:secret@h/db")

    def test_jdbc_target_error_hides_password(self) -> None:
        with pytest.raises(SettingError) as caught:
            jdbc_target("mysql://u:secret@h/db")

        assert "secret" not in str(caught.value)


class TestLatestCheckpoint:
    def test_latest_checkpoint_none_when_empty(self, tmp_path: Path) -> None:
        assert latest_checkpoint(tmp_path) is None

    def test_latest_checkpoint_newest_complete(self, tmp_path: Path) -> None:
        old = tmp_path / "job-a" / "chk-7"
        new = tmp_path / "job-b" / "chk-2"
        unfinished = tmp_path / "job-b" / "chk-3"
        for folder in (old, new, unfinished):
            folder.mkdir(parents=True)
        (old / "_metadata").write_bytes(b"x")
        (new / "_metadata").write_bytes(b"x")
        past = time.time() - 60
        os.utime(old / "_metadata", (past, past))

        assert latest_checkpoint(tmp_path) == new


class TestSecretsStayOutOfTheJobGraph:
    """Flink stores the job graph and shows it: no password may be in it."""

    def test_sink_ddl_names_the_user_not_the_password(self, tmp_path: Path) -> None:
        dsn = "postgresql://fleet:s3cret@db:5433/rastro"
        options = _parse_args(
            [*REQUIRED[:2], "--postgres", dsn, *REQUIRED[4:], "--data", str(tmp_path)]
        )

        ddl = _jdbc_ddl(options, "fixes_sink", "fixes", "device STRING", "device")

        assert "user=fleet" in ddl
        assert "s3cret" not in ddl and "password" not in ddl

    def test_password_file_is_owner_only_and_escaped(self, tmp_path: Path) -> None:
        target = jdbc_target("postgresql://fleet:a%3Ab%5Cc@db:5433/rastro")

        path = write_password_file(tmp_path, target)

        assert path is not None
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text() == "db:5433:rastro:fleet:a\\:b\\\\c\n"

    def test_no_password_no_file(self, tmp_path: Path) -> None:
        target = jdbc_target("postgresql://fleet@db/rastro")

        assert write_password_file(tmp_path, target) is None
        assert list(tmp_path.iterdir()) == []

    def test_operator_without_addresses_names_the_variables(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv(POSTGRES_ENV, raising=False)
        monkeypatch.setenv(REDIS_ENV, "redis://127.0.0.1:6379/0")

        expected = rf"\${POSTGRES_ENV} and \${REDIS_ENV}"
        with pytest.raises(RuntimeError, match=expected):
            stream_addresses()

    def test_operator_reads_addresses_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in job_environment("postgresql://u:p@h/d", "redis://r").items():
            monkeypatch.setenv(name, value)

        assert stream_addresses() == ("postgresql://u:p@h/d", "redis://r")
