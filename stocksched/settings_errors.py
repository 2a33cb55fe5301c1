"""Settings problems said as clearly as jobs.yaml's: where the value came from, which key,
what is wrong, and for a misspelt key the setting that was probably meant.

Each line names the value's origin: ``FILE:LINE`` of the key in the settings file, the
``STOCKSCHED_*`` variable, or the ``--flag``; then the dotted key and the message::

    config/stocksched.yaml:4: pool_sise: unknown setting (did you mean pool_size?)
    STOCKSCHED_POOL_SIZE: pool_size: Input should be a valid integer (got 'four')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

#: Where a value came from, by dotted key: "FILE:LINE", "STOCKSCHED_X" or "--flag".
Origins = dict[str, str]


def file_origins(path: Path, text: str) -> Origins:
    """Dotted key -> ``FILE:LINE`` of every key of a settings file (nested mappings too)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out: Origins = {}

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                dotted = f"{prefix}{key.value}"
                out[dotted] = f"{path}:{key.start_mark.line + 1}"
                walk(value, f"{dotted}.")

    walk(root, "")
    return out


def flag_name(dotted: str) -> str:
    """The command-line flag that sets ``dotted`` (``http.listen`` -> ``--listen``)."""
    return "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")


def explain(
    exc: ValidationError, model: type[BaseModel], origins: Mapping[str, str], fallback: str
) -> list[str]:
    """One line per problem of ``exc``; ``fallback`` names values with no known origin."""
    lines = []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        where = origins.get(dotted) or _nearest(dotted, origins) or fallback
        lines.append(f"{where}: {dotted}: {_message(err, model)}")
    return lines


def _nearest(dotted: str, origins: Mapping[str, str]) -> str | None:
    """The origin of the closest enclosing key (``http`` for ``http.listen``)."""
    parts = dotted.split(".")
    while len(parts) > 1:
        parts.pop()
        if (found := origins.get(".".join(parts))) is not None:
            return found
    return None


def _message(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (settings here: {', '.join(known)})"
        return f"unknown setting{hint}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if "input" in err and err["type"] != "value_error" and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return message


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the (nested) model at ``path``."""
    current: Any = model
    for name in path:
        field = current.model_fields.get(name)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return sorted(current.model_fields)
