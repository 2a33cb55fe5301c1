"""Checking a parsed jobs file: each problem mapped to ``FILE:LINE:COL: path: message``.

Every problem is reported at once, pointing at the offending value (at the job for a
missing field, at the ``defaults`` entry for a value that came from there), in one plain
sentence (pydantic's own wording never shows).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import date
from typing import Any

import yaml
from pydantic import ValidationError

from stocksched.jobs.clashes import CLASH_TICKERS_SHOWN, describe_window, latest_pointer_clashes
from stocksched.jobs.fields import show_value
from stocksched.jobs.spec import DEFAULTABLE_FIELDS, JOB_FIELDS, JobSpec, merge_defaults


def _child(node: yaml.Node | None, key: str | int, want_key: bool = False) -> yaml.Node | None:
    """The value node (or key node) at ``key`` inside a mapping or sequence node."""
    if isinstance(node, yaml.MappingNode):
        found = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                found = k if want_key else v
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def _descend(node: yaml.Node | None, keys: Iterable[str | int]) -> yaml.Node | None:
    for k in keys:
        deeper = _child(node, k)
        if deeper is None:
            return node
        node = deeper
    return node


_TOP_KEYS = ("version", "defaults", "jobs")
# Stand-ins for invalid or missing required fields when re-checking cross-field rules.
_PLACEHOLDERS: dict[str, Any] = {"id": "placeholder", "tickers": ["X"], "schedule": "@daily"}


class FileChecker:
    """Walks the parsed document and collects every error with its position."""

    def __init__(self, name: str, root: yaml.Node, today: date) -> None:
        self.name = name
        self.root = root
        self.context = {"today": today}
        self.errors: list[tuple[int, int, str]] = []
        self._seen: set[tuple[int, int, str]] = set()
        self.defaults_node: yaml.Node | None = None

    def add(self, node: yaml.Node | None, path: str, msg: str) -> None:
        mark = (node or self.root).start_mark
        entry = (mark.line + 1, mark.column + 1, f"{path}: {msg}" if path else msg)
        if entry not in self._seen:  # one bad default would otherwise repeat per job
            self._seen.add(entry)
            self.errors.append(entry)

    def formatted(self) -> list[str]:
        return [f"{self.name}:{ln}:{col}: {msg}" for ln, col, msg in sorted(self.errors)]

    def warnings(self, jobs: list[JobSpec]) -> list[str]:
        """Warning lines for a file without errors (so ``jobs[i]`` is the file's i-th job)."""
        jobs_node = _child(self.root, "jobs")
        out = []
        for clash in latest_pointer_clashes(jobs, self.context["today"]):
            first, second = jobs[clash.first], jobs[clash.second]
            node = _child(jobs_node, clash.second) or self.root
            names = ", ".join(clash.tickers)
            if len(clash.tickers) > CLASH_TICKERS_SHOWN + 1:  # "(+1 more)" saves nothing
                more = len(clash.tickers) - CLASH_TICKERS_SHOWN
                names = f"{', '.join(clash.tickers[:CLASH_TICKERS_SHOWN])} (+{more} more)"
            out.append(
                f"{self.name}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: "
                f"jobs[{clash.second}]: job {second.id!r} writes {names} with interval "
                f"{second.interval} under prefix {second.prefix!r} like jobs[{clash.first}] "
                f"(id {first.id!r}{_line_of(_child(jobs_node, clash.first))}) but with a "
                f"different window ({describe_window(second)}, not {describe_window(first)}): "
                "their :latest pointers will alternate between the two windows"
            )
        return out

    def check(self, doc: dict[Any, Any]) -> list[JobSpec]:
        """The valid jobs of a top-level mapping; the problems found go to ``errors``."""
        self._check_top_keys(doc)
        defaults = self._check_defaults(doc.get("defaults"))
        if "jobs" not in doc:
            self.add(self.root, "jobs", "required key is missing (write 'jobs: []' for no jobs)")
            return []
        jobs = doc["jobs"]
        jobs_node = _child(self.root, "jobs")
        if not isinstance(jobs, list):
            self.add(jobs_node, "jobs", f"must be a list of jobs, got {show_value(jobs)}")
            return []
        specs = [
            self._check_job(i, job, defaults, _child(jobs_node, i)) for i, job in enumerate(jobs)
        ]
        self._check_unique_ids(jobs, jobs_node)
        return [s for s in specs if s is not None]

    def _check_top_keys(self, doc: dict[Any, Any]) -> None:
        for key in doc:
            if key not in _TOP_KEYS:
                self.add(
                    _child(self.root, str(key), want_key=True), str(key), _unknown(key, _TOP_KEYS)
                )
        version = doc.get("version", 1)
        if version != 1 or isinstance(version, bool):
            self.add(
                _child(self.root, "version"),
                "version",
                f"unsupported version {show_value(version)}; this stocksched reads version 1",
            )

    def _check_defaults(self, defaults: Any) -> dict[str, Any]:
        self.defaults_node = _child(self.root, "defaults")
        if defaults is None:
            return {}
        if not isinstance(defaults, dict):
            self.add(
                self.defaults_node,
                "defaults",
                f"must be a mapping of job fields, got {show_value(defaults)}",
            )
            return {}
        good: dict[str, Any] = {}
        for key, value in defaults.items():
            if key in DEFAULTABLE_FIELDS:
                good[key] = value
            elif key == "id":
                self.add(
                    _child(self.defaults_node, "id", want_key=True),
                    "defaults.id",
                    "id cannot have a default; every job needs its own",
                )
            else:
                self.add(
                    _child(self.defaults_node, str(key), want_key=True),
                    f"defaults.{key}",
                    _unknown(key, DEFAULTABLE_FIELDS),
                )
        return good

    def _check_job(
        self, i: int, job: Any, defaults: dict[str, Any], node: yaml.Node | None
    ) -> JobSpec | None:
        if not isinstance(job, dict):
            self.add(
                node, f"jobs[{i}]", f"each job must be a mapping of fields, got {show_value(job)}"
            )
            return None
        merged = merge_defaults(defaults, job)
        try:
            return JobSpec.model_validate(merged, context=self.context)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        for err in errors:
            self._report(i, job, node, err)
        if not any(err["type"] == "job_rule" for err in errors):
            self._check_rules_despite(i, job, node, merged, errors)
        return None

    def _check_rules_despite(
        self,
        i: int,
        job: dict[str, Any],
        node: yaml.Node | None,
        merged: dict[str, Any],
        errors: list[Any],
    ) -> None:
        """pydantic checks cross-field rules only once every field is valid; to report all
        problems at once, re-check the rules with the bad fields left at their defaults."""
        bad = {str(err["loc"][0]) for err in errors if err["loc"]}
        candidate = {k: v for k, v in merged.items() if k not in bad and k in JOB_FIELDS}
        candidate.update({k: v for k, v in _PLACEHOLDERS.items() if k in bad or k not in candidate})
        try:
            JobSpec.model_validate(candidate, context=self.context)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                if err["type"] == "job_rule":
                    for field, msg in err["ctx"]["problems"]:
                        if field not in bad:
                            self._report_field(i, job, node, (field,), msg, rule=True)

    def _report(self, i: int, job: dict[str, Any], node: yaml.Node | None, err: Any) -> None:
        if err["type"] == "job_rule":
            for field, msg in err["ctx"]["problems"]:
                self._report_field(i, job, node, (field,), msg, rule=True)
            return
        loc = tuple(err["loc"])
        if err["type"] == "missing":
            self.add(node, _path(f"jobs[{i}]", loc), "required field is missing")
        elif err["type"] == "extra_forbidden":
            self.add(
                _child(node, str(loc[0]), want_key=True),
                _path(f"jobs[{i}]", loc),
                _unknown(loc[0], JOB_FIELDS),
            )
        elif not loc:
            self.add(node, f"jobs[{i}]", _message(err))
        else:
            self._report_field(i, job, node, loc, _message(err), rule=False)

    def _report_field(
        self,
        i: int,
        job: dict[str, Any],
        node: yaml.Node | None,
        loc: tuple[Any, ...],
        msg: str,
        *,
        rule: bool,
    ) -> None:
        field = str(loc[0])
        if field in job or self.defaults_node is None or _child(self.defaults_node, field) is None:
            self.add(_descend(node, loc), _path(f"jobs[{i}]", loc), msg)
        elif rule:  # depends on this job's other fields: name the job, point at the default
            self.add(
                _descend(self.defaults_node, loc),
                _path(f"jobs[{i}]", loc),
                f"{msg} (value from defaults)",
            )
        else:  # the default alone is bad: report it once, as defaults.<field>
            self.add(_descend(self.defaults_node, loc), _path("defaults", loc), msg)

    def _check_unique_ids(self, jobs: list[Any], jobs_node: yaml.Node | None) -> None:
        """On the raw ids, so a duplicate is reported even when the jobs have other errors."""
        first: dict[str, int] = {}
        for i, job in enumerate(jobs):
            job_id = job.get("id") if isinstance(job, dict) else None
            if not isinstance(job_id, str):
                continue
            if job_id in first:
                id_node = _child(_child(jobs_node, i), "id")
                line = _line_of(_child(_child(jobs_node, first[job_id]), "id"))
                self.add(
                    id_node,
                    f"jobs[{i}].id",
                    f"duplicate id {job_id!r} (first used by jobs[{first[job_id]}]{line})",
                )
            else:
                first[job_id] = i


def _line_of(node: yaml.Node | None) -> str:
    return f" on line {node.start_mark.line + 1}" if node is not None else ""


def _path(prefix: str, loc: Iterable[Any]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _unknown(key: object, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown field {str(key)!r} ({hint})"


def _message(err: Any) -> str:
    """pydantic's error as one plain sentence (its own format spans several lines)."""
    kind: str = err["type"]
    ctx = err.get("ctx") or {}
    got = show_value(err.get("input"))
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}, got {got}"
    simple = {
        "string_type": f"must be a string, got {got}",
        "string_too_short": "must not be empty",
        "bool_type": f"must be true or false, got {got}",
        "bool_parsing": f"must be true or false, got {got}",
        "int_type": f"must be a whole number, got {got}",
        "int_parsing": f"must be a whole number, got {got}",
        "int_from_float": f"must be a whole number, got {got}",
        "tuple_type": f"must be a list, got {got}",
        "list_type": f"must be a list, got {got}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}, got {got}",
        "less_than_equal": f"must be at most {ctx.get('le')}, got {got}",
    }
    if kind in simple:
        return simple[kind]
    if kind.startswith("date"):
        return f"must be a date written YYYY-MM-DD, got {got}"
    text = str(err["msg"]).splitlines()[0]
    return text[:1].lower() + text[1:]
