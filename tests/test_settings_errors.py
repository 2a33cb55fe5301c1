"""Settings errors name where the value came from (FILE:LINE, variable, flag), the key, and
for a misspelt key the setting meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from stocksched.settings import SettingsError, load_settings
from tests.helpers import run_cli

SETTINGS = """\
redis_url: memory://
pool_sise: 4
http:
  listen: nowhere
  protect_metric: true
log_level: LOUD
"""


def problems(path: Path | None, env: dict[str, str], **flags: object) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(path, env, flags)
    return str(info.value).splitlines()


def test_every_problem_of_the_file_with_its_line_and_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "stocksched.yaml"
    path.write_text(SETTINGS)
    assert sorted(problems(path, {})) == sorted(
        [
            f"{path}:2: pool_sise: unknown setting (did you mean pool_size?)",
            f"{path}:4: http.listen: expected HOST:PORT, got 'nowhere'",
            f"{path}:5: http.protect_metric: unknown setting (did you mean protect_metrics?)",
            f"{path}:6: log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' "
            "(got 'LOUD')",
        ]
    )


def test_values_from_the_environment_and_flags_are_named_by_them(tmp_path: Path) -> None:
    env = {"STOCKSCHED_POOL_SIZE": "four", "STOCKSCHED_LISTEN": "127.0.0.1:9731"}
    lines = problems(None, env, shutdown_grace="-1", **{"http.listen": "here"})
    assert sorted(lines) == [
        "--listen: http.listen: expected HOST:PORT, got 'here'",  # the flag wins over the env
        "--shutdown-grace: shutdown_grace: Input should be greater than or equal to 0 (got '-1')",
        "STOCKSCHED_POOL_SIZE: pool_size: Input should be a valid integer, unable to parse "
        "string as an integer (got 'four')",
    ]


def test_an_unknown_key_far_from_any_setting_lists_the_settings(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("http:\n  colour: blue\n")
    (line,) = problems(path, {})
    assert line.startswith(f"{path}:2: http.colour: unknown setting (settings here: enabled, ")
    assert "listen" in line and "max_connections" in line


def test_the_daemon_prints_them_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "stocksched.yaml"
    path.write_text(SETTINGS)
    proc = run_cli("run", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{path}:2: pool_sise: unknown setting (did you mean pool_size?)" in proc.stderr
