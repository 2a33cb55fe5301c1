"""``stocksched deploy-files DIR``: the deployment kit the wheel carries, written out.

A user who installed stocksched from a wheel has no checkout; the kit is package data
(``stocksched/kit/``, which the checkout's ``deploy/``, ``config/stocksched.yaml``,
``jobs.yaml`` and ``jobs.schema.json`` link to), written to DIR in the checkout's layout,
so the deploy guide's commands work the same from either.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from stocksched.exitcodes import EXIT_FAIL, EXIT_OK

KIT = "kit"


def kit_files() -> dict[str, bytes]:
    """Relative path -> content of every file of the kit."""
    out: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{name}/")
            elif not child.name.endswith((".pyc", ".py")):
                out[name] = child.read_bytes()

    walk(resources.files("stocksched").joinpath(KIT), "")
    return out


def cmd_deploy_files(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    files = kit_files()
    clashes = [n for n in files if (target / n).exists()] if not args.force else []
    if clashes:
        more = f" (+{len(clashes) - 5} more)" if len(clashes) > 5 else ""
        print(
            f"stocksched: {target} already holds {', '.join(clashes[:5])}{more}; "
            "nothing written (--force overwrites)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        for name, data in files.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    except OSError as exc:
        print(f"stocksched: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    for name in files:
        print(target / name)
    return EXIT_OK
