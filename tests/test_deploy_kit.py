"""The deployment kit travels in the wheel: ``stocksched deploy-files DIR`` writes it out
for a user who has no checkout (issue 13)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
KIT = [
    "config/stocksched.yaml",
    "deploy/grafana/stocksched-dashboard.json",
    "deploy/prometheus/scrape-config.yml",
    "deploy/prometheus/stocksched-rules.test.yml",
    "deploy/prometheus/stocksched-rules.yml",
    "deploy/stocksched.env.example",
    "deploy/stocksched.service",
    "jobs.schema.json",
    "jobs.yaml",
]


def test_deploy_files_writes_the_checkouts_files_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "kit"
    done = run_cli("deploy-files", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(out / name) for name in KIT]
    for name in KIT:
        assert (out / name).read_bytes() == (REPO / name).read_bytes(), name
    (out / "jobs.yaml").write_text("mine\n")
    again = run_cli("deploy-files", str(out), cwd=tmp_path)
    assert again.returncode == 1 and "nothing written (--force overwrites)" in again.stderr
    assert (out / "jobs.yaml").read_text() == "mine\n"
    forced = run_cli("deploy-files", str(out), "--force", cwd=tmp_path)
    assert (
        forced.returncode == 0
        and (out / "jobs.yaml").read_bytes() == (REPO / "jobs.yaml").read_bytes()
    )
    # What it writes is valid as written: the jobs file validates with its own schema line.
    checked = run_cli("validate", str(out / "jobs.yaml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.slow
def test_the_wheel_carries_the_kit_the_page_and_the_licence(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("stocksched-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"stocksched/kit/{n}" for n in KIT} <= names
    assert {"stocksched/http/static/htmx.min.js", "stocksched/http/templates/base.html"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode()
    # Installed from the wheel alone (no checkout on the path), the command works.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        check=True,
        timeout=300,
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = tmp_path / "from-wheel"
    done = subprocess.run(
        [sys.executable, "-I", "-c", _FROM_SITE, str(site), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert all((out / n).read_bytes() == (REPO / n).read_bytes() for n in KIT)


# -I ignores PYTHONPATH: put the wheel's install first, then the venv's packages (deps),
# never the checkout.
_FROM_SITE = """\
import sys, site
sys.path[:0] = [sys.argv[1]]
for p in site.getsitepackages():
    site.addsitedir(p)
import stocksched
assert stocksched.__file__.startswith(sys.argv[1]), stocksched.__file__
from stocksched.cli.commands import main
sys.exit(main(["deploy-files", sys.argv[2]]))
"""
