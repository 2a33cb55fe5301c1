"""A first load of a plain-layout file builds its jobs in groups (``reuse.load_in_groups``):
the same specs as the full parse, and every error or warning still at its FILE:LINE:COL."""

from __future__ import annotations

import pytest

from stocksched.jobs import loader
from stocksched.jobs.reuse import GROUP, load_in_groups, split_jobs
from tests.jobs_text import TODAY, errors_of, load

HEADER = "version: 1\ndefaults:\n  timezone: America/New_York\n  window: 30d\njobs:\n"


def many(n: int, extra: dict[int, str] | None = None) -> str:
    """``n`` jobs (7 lines from line 6); ``extra[i]`` is one more line for job ``i``."""
    out = [HEADER]
    for i in range(n):
        out.append(f"  - id: job-{i}\n    tickers: [T{i}]\n    schedule: '0 {i % 60} 9 * * *'\n")
        if extra and i in extra:
            out.append(f"    {extra[i]}\n")
    return "".join(out)


def test_groups_give_the_same_specs_as_the_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    text = many(2 * GROUP + 7)
    split = split_jobs(text)
    assert split is not None and load_in_groups(split, "jobs.yaml", TODAY) is not None
    grouped = load(text)
    monkeypatch.setattr(loader, "load_in_groups", lambda *_: None)
    full = load(text)
    assert grouped.jobs == full.jobs and grouped.warnings == full.warnings == ()
    assert grouped.jobs[-1].timezone == "America/New_York"  # defaults merged


def test_error_in_a_later_group_keeps_its_position() -> None:
    i = GROUP + 3
    text = many(2 * GROUP, {i: "retries: many"})
    line = 6 + 3 * i + 3  # the header is 5 lines, each job 3, the extra line after them
    assert errors_of(text) == [
        f"jobs.yaml:{line}:14: jobs[{i}].retries: must be a whole number, got 'many'"
    ]


def test_duplicate_id_across_groups_is_reported_with_both_lines() -> None:
    text = many(GROUP + 2).replace(f"id: job-{GROUP + 1}\n", "id: job-0\n")
    (error,) = errors_of(text)
    assert error.startswith(f"jobs.yaml:{6 + 3 * (GROUP + 1)}:9: jobs[{GROUP + 1}].id: ")
    assert "first used by jobs[0] on line 6" in error


@pytest.mark.parametrize(
    "change",
    [
        ("  - id: job-1\n", "  - <<: *first\n    id: job-1\n"),  # in the same group
        (f"  - id: job-{GROUP + 1}\n", f"  - <<: *first\n    id: job-{GROUP + 1}\n"),
    ],
)
def test_aliases_across_groups_take_the_full_parse(change: tuple[str, str]) -> None:
    text = many(GROUP + 2).replace("  - id: job-0\n", "  - &first\n    id: job-0\n")
    text = text.replace(*change)
    split = split_jobs(text)
    assert split is not None and load_in_groups(split, "jobs.yaml", TODAY) is None
    assert len(load(text).jobs) == GROUP + 2


def test_a_quoted_line_that_looks_like_an_item_takes_the_full_parse() -> None:
    text = many(3, {1: "name: 'first\n  - id: fake\n    rest'"})
    split = split_jobs(text)
    assert split is not None and load_in_groups(split, "jobs.yaml", TODAY) is None
    assert [j.id for j in load(text).jobs] == ["job-0", "job-1", "job-2"]
