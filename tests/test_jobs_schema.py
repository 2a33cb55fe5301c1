"""The committed jobs.schema.json: current, and useful to editors on the files users write.

Editors (the YAML language server) load it through the first line of jobs.yaml, so a stale or
wrong schema shows false errors, or none, while someone edits the file. Needs the
``jsonschema`` package (a test dependency).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stocksched.jobs import JobsFileError, jobs_file_json_schema, load_jobs_file

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "jobs.schema.json"
MODELINE = "# yaml-language-server: $schema=./jobs.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, text: str) -> list[str]:
    doc = yaml.safe_load(text)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_committed_schema_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stocksched", "schema"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == SCHEMA_FILE.read_bytes(), (
        "jobs.schema.json is out of date: run `stocksched schema > jobs.schema.json`"
    )


def test_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_repo_jobs_yaml_points_editors_at_the_schema() -> None:
    first = (ROOT / "jobs.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == MODELINE
    target = first.split("$schema=", 1)[1]
    assert (ROOT / target).resolve() == SCHEMA_FILE.resolve()  # both links into the kit
    # and beside the kit's own copy of jobs.yaml, as `stocksched deploy-files` writes them
    kit = ROOT / "stocksched" / "kit"
    assert (kit / target).resolve() == (kit / "jobs.schema.json").resolve()


def test_repo_jobs_yaml_satisfies_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    text = (ROOT / "jobs.yaml").read_text(encoding="utf-8")
    assert _errors(validator, text) == []
    load_jobs_file(ROOT / "jobs.yaml")  # and `validate` agrees


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S):
        if block.startswith(MODELINE):
            return str(block)
    raise AssertionError(f"README.md shows no jobs.yaml example starting with {MODELINE!r}")


def test_readme_example_satisfies_the_schema(
    validator: jsonschema.Draft202012Validator, tmp_path: Path
) -> None:
    text = _readme_example()
    assert _errors(validator, text) == []
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    load_jobs_file(path)


GOOD = """\
version: 1
defaults:
  timezone: Europe/London
  window: 30d
jobs:
  - id: prices_daily
    tickers: [AAPL, MSFT]
    schedule: "0 18 * * 1-5"
    ttl: 90d
    retries: 2
"""


def test_schema_accepts_a_minimal_file_and_defaults(
    validator: jsonschema.Draft202012Validator,
) -> None:
    assert _errors(validator, GOOD) == []
    assert _errors(validator, "jobs: []\n") == []


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("tickers:", "tickrs:"), "jobs/0: Additional properties"),
        (GOOD.replace('"0 18 * * 1-5"', "5"), "jobs/0/schedule: 5 is not of type 'string'"),
        (GOOD.replace("window: 30d", "window: 30 days"), "defaults/window"),
        (GOOD.replace("version: 1", "version: 2"), "version: 1 was expected"),
        (GOOD + "    interval: 2h\n", "jobs/0/interval: '2h' is not one of"),
        (GOOD + "    source: google\n", "jobs/0/source"),
        (GOOD.replace("id: prices_daily", "name: Prices"), "jobs/0: 'id' is a required property"),
        ("version: 1\n", ": 'jobs' is a required property"),
        (GOOD + "extra: 1\n", ": Additional properties are not allowed ('extra'"),
    ],
)
def test_schema_rejects_a_bad_file_that_validate_also_rejects(
    validator: jsonschema.Draft202012Validator, tmp_path: Path, text: str, where: str
) -> None:
    errors = _errors(validator, text)
    assert any(where in e for e in errors), errors
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(JobsFileError):
        load_jobs_file(path)


def test_json_schema_describes_the_file_as_written() -> None:
    schema = jobs_file_json_schema()
    json.dumps(schema)  # serialisable for `stocksched schema`
    assert schema["required"] == ["jobs"] and schema["additionalProperties"] is False
    job = schema["properties"]["jobs"]["items"]
    assert job["required"] == ["id"] and job["additionalProperties"] is False
    props = job["properties"]
    window = props["window"]["anyOf"][0]
    assert {"type": "string", "pattern": window["anyOf"][0]["pattern"]} == window["anyOf"][0]
    pattern = re.compile(window["anyOf"][0]["pattern"])
    assert pattern.match("30d") and pattern.match("1h30m") and not pattern.match("30x")
    assert set(props["interval"]["enum"]) >= {"1m", "1h", "1d", "3mo"}
    assert props["catchup"]["default"] == "1h"
    defaults = schema["properties"]["defaults"]
    assert "id" not in defaults["properties"] and "timezone" in defaults["properties"]
