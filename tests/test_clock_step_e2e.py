"""Issue 9, item 5 end to end: the daemon's wall clock stepped back, for real (libfaketime).

The daemon runs under libfaketime (Debian's ``faketime`` package) on a private
redis-server; only the daemon's clock is moved, Redis keeps real time.

- live: the wall clock steps back (monotonic time untouched, as with an NTP step or
  ``date -s``): the step is logged once, the ``@every 1s`` job keeps running and every
  run is recorded under an id of its own; a once-a-minute slot that already ran does not
  run again when its time comes round; plain ids come back once the clock has caught up.
  A second, one-hour step does the same, with one more warning.
- restart: the daemon stops and comes back with its clock behind, to before the first
  slot it ran: those slots run again as repeats (before, their claims were found taken
  and they were dropped without a word, for as long as the clock was behind), each
  recorded, with one warning.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

import pytest
import redis

from stocksched.model import RunResult, RunStatus
from tests.daemons import Launch, Replica, history, wait_for, wait_ready

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LIBFAKETIME.exists() or shutil.which("faketime") is None,
        reason="libfaketime is not installed (Debian package faketime; .ci/run installs it)",
    ),
]

EXECUTED = {RunStatus.SUCCESS, RunStatus.PARTIAL_SUCCESS, RunStatus.FAILED}
STEP_MSG = "keep running with run ids marked as repeats"
REPEAT_ID = re.compile(r"^tick:\d+-b\d+$")
PLAIN_ID = re.compile(r"^tick:\d+$")


def jobs_text(minutely_second: int | None = None) -> str:
    text = """\
version: 1
jobs:
  - id: tick
    tickers: [T1]
    schedule: "@every 1s"
    source: demo
    window: 10d
    ttl: 10m
"""
    if minutely_second is not None:
        text += f"""\
  - id: minutely
    tickers: [M1]
    schedule: "{minutely_second} * * * * *"
    source: demo
    window: 10d
    catchup: "0"
"""
    return text


SITE = Path(__file__).parent / "faketime_site"  # time.sleep without libfaketime's bug


def faked(env_extra: dict[str, str]) -> dict[str, str]:
    """Environment for a daemon under libfaketime with a real monotonic clock."""
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # a step moves the wall clock only
        "PYTHONPATH": path,
        **env_extra,
    }


def executed(client: redis.Redis, job_id: str) -> list[RunResult]:
    return [r for r in history(client, job_id) if r.status in EXECUTED]


def apply(replica: Replica, jobs: Path, text: str) -> None:
    jobs.write_text(text)
    digest = sha256(text.encode()).hexdigest()
    replica.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: replica.has_config(digest), alive=[replica])


def step_warnings(replica: Replica) -> list[str]:
    return [line for line in replica.output().splitlines() if STEP_MSG in line]


def test_a_live_step_back_keeps_short_jobs_running_and_fixed_slots_not_rerun(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(jobs_text())
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n")
    daemon = launch(
        "a",
        env=faked(
            {
                "FAKETIME_TIMESTAMP_FILE": str(offset),
                "FAKETIME_CACHE_DURATION": "1",  # the file is read again every second
            }
        ),
    )
    wait_ready(daemon)
    for _ in range(3):  # a once-a-minute slot two seconds from now
        slot = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
        apply(daemon, jobs, jobs_text(slot.second))
        if datetime.now(UTC) < slot:
            break
    wait_for(lambda: executed(real_redis, "minutely"), 15, alive=[daemon])
    wait_for(lambda: len(executed(real_redis, "tick")) >= 3, 15, alive=[daemon])

    count = len(executed(real_redis, "tick"))
    offset.write_text("-10\n")  # 10 s back: the minutely slot comes round again
    stepped_at = datetime.now(UTC)
    # Runs go on (before: none for 10 s), under ids of their own.
    wait_for(lambda: len(executed(real_redis, "tick")) >= count + 5, 10, alive=[daemon])
    wait_for(
        lambda: sum(bool(REPEAT_ID.match(r.run_id)) for r in executed(real_redis, "tick")) >= 3,
        10,
        alive=[daemon],
    )
    wait_for(lambda: len(step_warnings(daemon)) == 1, 5, alive=[daemon])
    assert "stepped back by 0:00:10 " in step_warnings(daemon)[0]
    # Plain ids again once the daemon's clock is past the mark (and the minutely slot).
    wait_for(
        lambda: any(
            PLAIN_ID.match(r.run_id) and r.scheduled_for > stepped_at + timedelta(seconds=1)
            for r in executed(real_redis, "tick")
            if r.scheduled_for is not None
        ),
        25,
        alive=[daemon],
    )
    minutely = executed(real_redis, "minutely")
    assert [r.scheduled_for for r in minutely] == [slot], minutely  # not run a second time

    count = len(executed(real_redis, "tick"))
    offset.write_text("-3610\n")  # and another hour back
    wait_for(lambda: len(executed(real_redis, "tick")) >= count + 5, 10, alive=[daemon])
    wait_for(lambda: len(step_warnings(daemon)) == 2, 5, alive=[daemon])
    assert "stepped back by 1:00:00 " in step_warnings(daemon)[1]
    out = daemon.stop()
    assert len(step_warnings(daemon)) == 2, out

    runs = history(real_redis, "tick")
    ids = Counter(r.run_id for r in runs)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    # Every slot from the minutely one on has its entry: the slot times of each stretch
    # (before the first step, after it, after the second) have no gap, whatever the
    # statuses. History is in write order; only a step back starts a new stretch.
    first = next(i for i, r in enumerate(runs) if r.scheduled_for and r.scheduled_for >= slot)
    after = [r.scheduled_for for r in runs[first:] if r.scheduled_for]
    stretches = [[after[0]]]
    for prev, cur in itertools.pairwise(after):
        if cur <= prev - timedelta(seconds=5):
            stretches.append([cur])
        else:
            stretches[-1].append(cur)
    for times in stretches:
        got = sorted(set(times))
        assert got == [got[0] + timedelta(seconds=i) for i in range(len(got))], got
    assert len(stretches) == 3 and all(len(s) >= 3 for s in stretches[1:]), stretches
    assert len(executed(real_redis, "minutely")) == 1


def test_a_restart_with_the_clock_behind_runs_and_records_the_repeats(
    tmp_path: Path, real_redis: redis.Redis, launch: Launch
) -> None:
    (tmp_path / "jobs.yaml").write_text(jobs_text())
    first = launch("a")
    wait_ready(first)
    wait_for(lambda: len(executed(real_redis, "tick")) >= 8, 20, alive=[first])
    first.stop()
    before = history(real_redis, "tick")
    assert step_warnings(first) == []

    # Back to just before the first daemon's first slot: every slot the restarted daemon
    # sees for the next seconds was claimed and run by the first one.
    first_slot = before[0].scheduled_for
    assert first_slot is not None
    behind_s = math.ceil((datetime.now(UTC) - first_slot).total_seconds()) + 1
    behind = launch("b", env=faked({"FAKETIME": f"-{behind_s}"}))
    wait_ready(behind)
    # Runs go on at once (before: the minute's slots were found claimed and dropped).
    wait_for(lambda: len(executed(real_redis, "tick")) >= len(before) + 5, 10, alive=[behind])
    wait_for(
        lambda: sum(bool(REPEAT_ID.match(r.run_id)) for r in executed(real_redis, "tick")) >= 5,
        15,
        alive=[behind],
    )
    out = behind.stop()
    warnings = step_warnings(behind)
    assert len(warnings) == 1 and "at startup is behind the last recorded run" in warnings[0], out

    runs = history(real_redis, "tick")
    after = runs[len(before) :]
    assert {r.status for r in after} <= EXECUTED, [(r.run_id, r.status) for r in after]
    ids = Counter(r.run_id for r in runs)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    assert all(REPEAT_ID.match(r.run_id) for r in after)  # all within the time behind
    # The repeats are the slots the first daemon ran (and the ones before it), in order.
    slots = [r.scheduled_for for r in after]
    assert None not in slots
    assert slots == sorted(s for s in slots if s is not None)
    assert os.environ.get("FAKETIME") is None  # only the daemon's clock was moved
