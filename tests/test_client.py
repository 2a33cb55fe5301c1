"""`stocksched status|jobs|runs|trigger|pause|resume` against a real ApiServer on a free port."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stocksched.cli import main
from stocksched.cli.output import fmt_duration, fmt_time, format_runs, format_status, table
from stocksched.cli.remote import ApiClient, daemon_url, url_from_listen
from stocksched.http import Access, ApiServer
from tests.conftest import free_port
from tests.test_api import TOKEN, Stack


@dataclass
class Daemon:
    stack: Stack
    server: ApiServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STOCKSCHED_* from the developer's shell; no config/stocksched.yaml from the repo."""
    for var in (
        "STOCKSCHED_URL",
        "STOCKSCHED_TOKEN_FILE",
        "STOCKSCHED_CONFIG",
        "STOCKSCHED_LISTEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def _serve(tmp_path: Path, **kw: object) -> Iterator[Daemon]:
    stack = Stack(tmp_path, **kw)  # type: ignore[arg-type]
    server = ApiServer(stack.app, "127.0.0.1", 0)
    server.start()
    try:
        yield Daemon(stack, server)
    finally:
        server.stop()
        stack.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from _serve(tmp_path)


@pytest.fixture
def slow_daemon(tmp_path: Path) -> Iterator[Daemon]:
    yield from _serve(tmp_path, latency=1.0)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Daemon]:
    yield from _serve(tmp_path, token=TOKEN)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def columns(line: str, header: str) -> list[str]:
    """Split a table line at the header's column starts (headers like "LAST RUN" are one)."""
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", header)]
    return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]


# -- reading -----------------------------------------------------------------------------


def test_status_table_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "--url", daemon.url)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert re.match(r"stocksched \S+: running, up \d", lines[0])
    assert "jobs.yaml (sha256 " in out and "5 jobs" in out
    assert "5 total: 4 pending, 0 running, 0 completed, 0 failed, 1 paused" in out
    assert "last reload:" in out and "ok: added 5, changed 0, removed 0, unchanged 0" in out

    code, out, _ = run(capsys, "status", "--url", daemon.url, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["running"] is True and data["jobs_total"] == 5


def test_status_shows_reload_errors(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.stack.jobs_path.write_text("jobs:\n  - id: Bad\n")
    daemon.stack.c.reloader.reload()
    code, out, _ = run(capsys, "status", "--url", daemon.url)
    assert code == 0
    assert "FAILED, keeping the last good config:" in out
    assert re.search(r"^  \S*jobs\.yaml:2:\d+: jobs\[0\]", out, re.MULTILINE)


def test_jobs_table_is_aligned_and_json_is_full(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "jobs", "--url", daemon.url)
    assert code == 0
    header, *rows = out.splitlines()
    assert re.split(r"  +", header) == [
        "JOB",
        "STATUS",
        "SCHEDULE",
        "TIMEZONE",
        "TICKERS",
        "LAST RUN",
        "RESULT",
        "NEXT RUN",
    ]
    by_id = {columns(r, header)[0]: columns(r, header) for r in rows}
    assert sorted(by_id) == ["alpha", "beta", "broken", "mixed", "off"]
    assert by_id["alpha"][1] == "pending" and by_id["alpha"][2] == "0 0 1 1 *"
    assert by_id["alpha"][4] == "2" and by_id["alpha"][6] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", by_id["alpha"][-1])
    assert by_id["off"][1] == "disabled" and by_id["off"][-1] == "-"

    code, out, _ = run(capsys, "jobs", "--url", daemon.url, "--json")
    jobs = json.loads(out)
    assert {j["job_id"] for j in jobs} == set(by_id) and "spec" in jobs[0]


def test_runs_table_limit_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "runs", "alpha", "--url", daemon.url)
    assert code == 0 and out.strip() == "no runs recorded yet"
    first = daemon.stack.trigger_and_wait("alpha")
    second = daemon.stack.trigger_and_wait("alpha")
    code, out, _ = run(capsys, "runs", "alpha", "--url", daemon.url)
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["RUN", "ID", "TRIGGER"]
    assert [r.split()[0] for r in rows] == [second["run_id"], first["run_id"]]
    assert rows[0].split()[1:3] == ["manual", "success"]
    code, out, _ = run(capsys, "runs", "alpha", "--limit", "1", "--json", "--url", daemon.url)
    assert [r["run_id"] for r in json.loads(out)] == [second["run_id"]]


# -- acting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "status", "exit_code"),
    [("alpha", "success", 0), ("mixed", "partial_success", 3), ("broken", "failed", 1)],
)
def test_trigger_wait_exits_like_run_job(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], job: str, status: str, exit_code: int
) -> None:
    code, out, _ = run(capsys, "trigger", job, "--wait", "--url", daemon.url)
    assert code == exit_code
    assert re.match(rf"{job} {job}:m\S+: {status} in \d+\.\d\ds, ", out)
    if status != "success":
        assert re.search(r"^  BAD\w: no such symbol$", out, re.MULTILINE)


def test_trigger_without_wait_and_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "trigger", "beta", "--url", daemon.url)
    assert code == 0 and re.fullmatch(r"beta: run beta:m\S+ started\n", out)
    run_id = out.split()[2]
    daemon.stack.wait_run("beta", run_id)
    code, out, _ = run(capsys, "trigger", "beta", "--wait", "--json", "--url", daemon.url)
    result = json.loads(out)
    assert code == 0 and result["status"] == "success" and result["job_id"] == "beta"


def test_trigger_while_running_prints_the_servers_message(
    slow_daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "trigger", "alpha", "--url", slow_daemon.url)[0] == 0
    code, out, err = run(capsys, "trigger", "alpha", "--url", slow_daemon.url)
    assert code == 1 and out == ""
    assert err.startswith("stocksched: HTTP 409: job 'alpha' is already running")


def test_trigger_wait_on_a_running_job_waits_for_that_run(
    slow_daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "trigger", "alpha", "--url", slow_daemon.url)
    assert code == 0
    first = out.split()[2]
    code, out, err = run(capsys, "trigger", "alpha", "--wait", "--url", slow_daemon.url)
    assert code == 0, err
    assert err == f"stocksched: alpha is already running: waiting for {first}\n"
    assert out.startswith(f"alpha {first}: success in ")  # that run, reported like run-job
    assert [r.run_id for r in slow_daemon.stack.c.registry.get_runs("alpha", 10)] == [first]


def test_trigger_wait_times_out(slow_daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "trigger", "alpha", "--wait", "--timeout", "0.2", "--url", slow_daemon.url
    )
    assert code == 1 and "did not finish within 0.2s" in err


def test_pause_and_resume(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "pause", "alpha", "--url", daemon.url)
    assert code == 0 and out.startswith("alpha: paused: no scheduled runs until resumed")
    code, out, _ = run(capsys, "jobs", "--url", daemon.url)
    assert re.search(r"^alpha\s+paused\s", out, re.MULTILINE)
    code, out, _ = run(capsys, "resume", "alpha", "--url", daemon.url)
    assert code == 0 and out.startswith("alpha: resumed; next run at ")
    code, out, _ = run(capsys, "resume", "off", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out)["active"] is False


def test_unknown_job_is_a_usage_error(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("runs", "trigger", "pause", "resume"):
        code, out, err = run(capsys, cmd, "nope", "--url", daemon.url)
        assert code == 2 and out == ""
        assert err == "stocksched: HTTP 404: no job 'nope' in the current config\n"
    code, _, err = run(capsys, "runs", "Not-Valid", "--url", daemon.url)
    assert code == 2 and err.startswith("stocksched: HTTP 422: job_id: ")


# -- where the daemon is, and the token -----------------------------------------------------


def test_unreachable_daemon_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["status"], ["jobs"], ["trigger", "alpha", "--wait"], ["pause", "alpha"]):
        code, out, err = run(capsys, *argv, "--url", url)
        assert code == 1 and out == ""
        assert err.startswith(f"stocksched: cannot reach the stocksched daemon at {url}: ")
        assert "is `stocksched run` running?" in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_url_from_env_and_from_settings(
    daemon: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STOCKSCHED_URL", daemon.url)
    assert run(capsys, "status")[0] == 0
    monkeypatch.delenv("STOCKSCHED_URL")
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"http:\n  listen: 0.0.0.0:{daemon.server.port}\n")
    assert run(capsys, "jobs", "--config", str(settings))[0] == 0
    monkeypatch.setenv("STOCKSCHED_LISTEN", f"127.0.0.1:{daemon.server.port}")
    assert run(capsys, "status")[0] == 0


def test_token_from_flag_env_or_settings(
    secured: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    code, _, err = run(capsys, "pause", "alpha", "--url", secured.url)
    assert code == 2
    assert err == (
        "stocksched: HTTP 401: missing 'Authorization: Bearer <token>' header "
        "(set --token-file or STOCKSCHED_TOKEN_FILE)\n"
    )
    assert run(capsys, "status", "--url", secured.url)[0] == 0  # loopback GETs need no token
    assert (
        run(capsys, "pause", "alpha", "--url", secured.url, "--token-file", str(token_file))[0] == 0
    )
    monkeypatch.setenv("STOCKSCHED_TOKEN_FILE", str(token_file))
    assert run(capsys, "resume", "alpha", "--url", secured.url)[0] == 0
    monkeypatch.delenv("STOCKSCHED_TOKEN_FILE")
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"http:\n  token_file: {token_file}\n")
    assert (
        run(capsys, "trigger", "alpha", "--wait", "--url", secured.url, "--config", str(settings))[
            0
        ]
        == 0
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    code, _, err = run(capsys, "pause", "alpha", "--url", secured.url, "--token-file", str(wrong))
    assert code == 2 and "HTTP 401: invalid token" in err


@pytest.fixture
def exposed(tmp_path: Path) -> Iterator[Daemon]:
    """Reads protected, as on a daemon listening beyond loopback with a token."""
    yield from _serve(tmp_path, access=Access(TOKEN, reads=True))


def test_reads_send_the_token(
    exposed: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "jobs", "--url", exposed.url)
    assert code == 2
    assert "HTTP 401: missing 'Authorization: Bearer <token>' header" in err
    assert "(set --token-file or STOCKSCHED_TOKEN_FILE)" in err
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    for command in (["status"], ["jobs"], ["runs", "alpha"]):
        code, out, err = run(
            capsys, *command, "--url", exposed.url, "--token-file", str(token_file)
        )
        assert code == 0, err
        assert out


def test_a_read_goes_without_an_unreadable_token_file(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reads of a loopback daemon are open: an operator without the secret can still look.
    missing = str(tmp_path / "missing")
    assert run(capsys, "jobs", "--url", daemon.url, "--token-file", missing)[0] == 0


def test_unreadable_token_file_is_a_usage_error(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "pause", "alpha", "--url", daemon.url, "--token-file", str(tmp_path / "missing")
    )
    assert code == 2 and err.startswith("stocksched: cannot read API token file ")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = run(capsys, "pause", "alpha", "--url", daemon.url, "--token-file", str(empty))
    assert code == 2 and "is empty" in err


def test_not_a_stocksched_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    other = FastAPI()
    other.get("/scheduler/status", response_class=PlainTextResponse)(lambda: "hello")
    server = ApiServer(other, "127.0.0.1", 0)
    server.start()
    try:
        code, _, err = run(capsys, "status", "--url", server.url)
        assert code == 1 and "not JSON" in err
        code, _, err = run(capsys, "jobs", "--url", server.url)
        assert code == 2 and "HTTP 404: Not Found" in err
    finally:
        server.stop()


# -- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9731", "http://127.0.0.1:9731"),
        ("0.0.0.0:80", "http://127.0.0.1:80"),
        ("[::1]:9731", "http://[::1]:9731"),
        ("[::]:9731", "http://[::1]:9731"),
        ("myhost:1234", "http://myhost:1234"),
    ],
)
def test_url_from_listen(listen: str, url: str) -> None:
    assert url_from_listen(listen) == url


def test_table_and_durations() -> None:
    assert table(["A", "LONGER"], [["xxx", "1"], ["y", "22"]]).splitlines() == [
        "A    LONGER",
        "xxx  1",
        "y    22",
    ]
    assert [fmt_duration(s) for s in (0.25, 42, 125, 3 * 3600 + 61, 90000)] == [
        "0.2s",
        "42s",
        "2m05s",
        "3h01m",
        "1d01h00m",
    ]


# -- issue 8: reasons and errors in `runs`; storage and replicas in `status` -------------------


def _run(run_id: str, status: str, failed: dict[str, str], reason: str = "") -> dict[str, object]:
    return {
        "run_id": run_id,
        "job_id": "prices",
        "trigger": "schedule",
        "status": status,
        "scheduled_for": None,
        "started_at": "2026-03-02T10:00:00+00:00",
        "finished_at": "2026-03-02T10:00:01+00:00",
        "duration_s": 1.0,
        "fetched": ["OK1"],
        "failed": list(failed),
        "errors": failed,
        "rows_stored": 20,
        "reason": reason,
    }


def test_runs_table_shows_the_reason_and_the_first_failing_tickers() -> None:
    long_error = "HTTP 404 Not Found:\n  " + "quote not found for symbol " * 10
    runs = [
        _run(
            "prices:2",
            "failed",
            {f"T{i}": long_error if i == 0 else f"no data for T{i}" for i in range(5)},
            reason="timeout after 0:01:00",
        ),
        _run("prices:1", "partial_success", {"BAD": "no such symbol"}),
        _run("prices:0", "success", {}),
    ]
    out = format_runs(runs)
    lines = out.splitlines()
    header = lines[0]
    assert lines[1].startswith("prices:2 ") and columns(lines[1], header)[-1] == (
        "timeout after 0:01:00"
    )
    # Under the failed run: its first three failing tickers, one readable line each, then a count.
    assert lines[2].startswith("  T0: HTTP 404 Not Found: quote not found for symbol quote")
    assert lines[2].endswith("...") and len(lines[2]) <= 102  # cut to 100 characters
    assert lines[3:6] == [
        "  T1: no data for T1",
        "  T2: no data for T2",
        "  +2 more (--json lists every error)",
    ]
    assert lines[6].startswith("prices:1 ")
    assert lines[7] == "  BAD: no such symbol"
    assert lines[8].startswith("prices:0 ") and len(lines) == 9  # a success has no sub-lines


def test_runs_of_a_failed_job_show_its_ticker_errors(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    run_ = daemon.stack.trigger_and_wait("broken")
    code, out, _ = run(capsys, "runs", "broken", "--url", daemon.url)
    assert code == 0
    header, row, detail = out.splitlines()
    assert columns(row, header)[:3] == [run_["run_id"], "manual", "failed"]
    assert detail == "  BADY: no such symbol"


def _status(**kw: object) -> dict[str, object]:
    st: dict[str, object] = {
        "running": True,
        "version": "1.2.3",
        "started_at": "2026-03-02T10:00:00+00:00",
        "uptime_s": 65.0,
        "jobs_total": 1,
        "jobs_by_state": {"pending": 1},
        "config": {"path": "jobs.yaml", "sha256": "ab" * 32, "jobs": 1},
        "last_reload": {
            "at": "2026-03-02T10:00:00+00:00",
            "ok": True,
            "errors": [],
            "added": 1,
            "changed": 0,
            "removed": 0,
            "unchanged": 0,
        },
        "replicas": [{"replica_id": "a", "version": "1.2.3"}],
    }
    st.update(kw)
    return st


def test_status_shows_storage_health_and_unknown_replicas() -> None:
    up = format_status(_status(storage={"up": True, "since": None, "reason": ""}))
    assert re.search(r"^storage: +up$", up, re.MULTILINE)
    assert re.search(r"^replicas:$", up, re.MULTILINE) and "REPLICA_ID" in up

    down = format_status(
        _status(
            storage={
                "up": False,
                "since": "2026-03-02T10:04:05+00:00",
                "reason": "Connection refused",
            },
            replicas=None,
        )
    )
    since = fmt_time("2026-03-02T10:04:05+00:00")
    assert re.search(
        rf"^storage: +DOWN since {re.escape(since)} \(Connection refused\)$", down, re.MULTILINE
    )
    assert re.search(r"^replicas: +unknown \(Redis unavailable\)$", down, re.MULTILINE)

    # An older daemon sends neither field: nothing is made up.
    old = _status()
    del old["replicas"]
    assert "storage" not in format_status(old) and "replicas" not in format_status(old)


# -- issue 8: --url in the format http.listen uses -------------------------------------------


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1:9731", "http://127.0.0.1:9731"),
        ("localhost:9731", "http://localhost:9731"),
        ("[::1]:9731", "http://[::1]:9731"),
        ("0.0.0.0:9731", "http://127.0.0.1:9731"),  # copied from http.listen: this machine
        (" http://127.0.0.1:9731/ ", "http://127.0.0.1:9731/"),
        ("https://sched.example.com", "https://sched.example.com"),  # behind a proxy, port 443
    ],
)
def test_daemon_url_accepts_urls_and_bare_host_port(value: str, url: str) -> None:
    assert daemon_url(value) == url


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost", "no port"),
        ("127.0.0.1:", "invalid address"),
        ("127.0.0.1:99999", "invalid address"),
        ("redis://127.0.0.1:6379", "not an http(s) URL"),
        ("ftp://host:21", "not an http(s) URL"),
        ("http://:9731", "no host"),
        ("http://host:port", "invalid port"),
    ],
)
def test_bad_url_is_a_usage_error_not_an_unreachable_daemon(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    message: str,
) -> None:
    code, out, err = run(capsys, "status", "--url", value)
    assert code == 2 and out == ""
    assert err.startswith(f"stocksched: --url {value!r}: {message}; expected http(s)://")
    assert "cannot reach" not in err and err.count("\n") == 1
    monkeypatch.setenv("STOCKSCHED_URL", value)
    code, _, err = run(capsys, "jobs")
    assert code == 2 and err.startswith(f"stocksched: STOCKSCHED_URL {value!r}: {message}")


def test_bare_host_port_reaches_the_daemon(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{daemon.server.port}"  # as http.listen writes it
    code, out, err = run(capsys, "status", "--url", address)
    assert code == 0 and err == "" and out.startswith("stocksched 9.9.9-test: running")
    monkeypatch.setenv("STOCKSCHED_URL", address)
    code, out, _ = run(capsys, "jobs", "--json")
    assert code == 0 and len(json.loads(out)) == 5


def test_the_client_pauses_and_resumes_through_the_documented_paths() -> None:
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        return httpx.Response(200, json={})

    client = ApiClient("http://daemon", transport=httpx.MockTransport(answer))
    client.pause("a")
    client.resume("a")
    assert seen == [("POST", "/scheduler/jobs/a/pause"), ("POST", "/scheduler/jobs/a/resume")]
