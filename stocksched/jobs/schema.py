"""The JSON Schema of jobs.yaml (``stocksched schema`` prints it; jobs.schema.json is it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from stocksched.durations import format_duration
from stocksched.jobs.spec import JobSpec


def jobs_file_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of jobs.yaml as users write it, for editors and CI.

    Cross-field rules (window vs start/end, Yahoo's limits) are left to ``validate``.
    """
    job = JobSpec.model_json_schema(mode="validation")
    job.pop("title", None)
    props = job["properties"]
    for prop in props.values():
        prop.pop("title", None)
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    for name, info in JobSpec.model_fields.items():
        if isinstance(info.default, timedelta):  # pydantic writes ISO 8601 (PT1H) here
            props[name]["default"] = format_duration(info.default)
    job["additionalProperties"] = False
    job["required"] = ["id"]  # everything else may come from defaults
    defaults_schema = {
        "type": "object",
        "description": "Defaults for every job field except id",
        "additionalProperties": False,
        "properties": {k: v for k, v in props.items() if k != "id"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "stocksched jobs file",
        "type": "object",
        "additionalProperties": False,
        "required": ["jobs"],
        "properties": {
            "version": {"const": 1, "description": "File format version (1)"},
            "defaults": defaults_schema,
            "jobs": {"type": "array", "items": job},
        },
    }
