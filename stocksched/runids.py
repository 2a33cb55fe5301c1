"""Run ids: the one place their formats are made.

A run id names one run of one job, in the history, the logs and the slot claim. A
scheduled run's id is derived from its slot alone, so every replica computes the same id
for the same slot and the claim lets exactly one run it; the other forms say why a run
is not a plain slot's (a manual trigger, a rerun of an interrupted run, a repeat after
the wall clock stepped back).
"""

from __future__ import annotations

import secrets
from datetime import datetime


def scheduled_run_id(job_id: str, slot: datetime) -> str:
    """Deterministic id of a slot's run: the same on every replica and after restarts."""
    return f"{job_id}:{int(slot.timestamp() * 1000)}"


def repeat_run_id(job_id: str, slot: datetime, mark: datetime) -> str:
    """Id of a slot run again after the wall clock stepped back behind ``mark``.

    ``job:<slot ms>-b<mark ms>``: the plain id of that slot time is already claimed (it
    ran, or was recorded, before the step), so the repeat needs its own. ``mark`` is the
    latest slot the job had when the clock went back; it is the same on every replica
    that saw the same runs, so they compute the same id and the slot claim picks one.
    """
    return f"{scheduled_run_id(job_id, slot)}-b{int(mark.timestamp() * 1000)}"


def manual_run_id(job_id: str, now: datetime) -> str:
    return f"{job_id}:m{int(now.timestamp() * 1000)}-{secrets.token_hex(2)}"


def rerun_run_id(run_id: str) -> str:
    """Deterministic id for re-running an interrupted run (its own id's slot stays claimed).

    ``job:1700000000000`` -> ``job:1700000000000-r1`` -> ``...-r2``; deterministic so
    that two replicas deciding to rerun the same run still claim one slot.
    """
    base, sep, n = run_id.rpartition("-r")
    if sep and n.isdigit() and ":" in base:
        return f"{base}-r{int(n) + 1}"
    return f"{run_id}-r1"
