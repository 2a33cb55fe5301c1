"""Walking and building a jobs file's YAML node tree (``stocksched.jobs.loader`` parses).

``scan``: duplicate keys and aliases in one walk; ``construct``: the document PyYAML's
constructor would build, faster for the plain nodes a jobs file is made of.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

_TAG = "tag:yaml.org,2002:"


def construct(loader: yaml.BaseLoader, root: yaml.Node) -> Any:
    """The document ``loader.construct_document(root)`` gives, built faster.

    Plain strings, lists and mappings with string keys (all of a usual jobs file) are
    built here; every other node (numbers, booleans, null, merge keys ``<<``, other
    tags) by PyYAML's own constructor, so the result is the same.
    """
    try:
        return _build(loader, root)
    except RecursionError:  # absurdly deep nesting: PyYAML's constructor decides
        return loader.construct_document(root)


def _build(loader: yaml.BaseLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "str":
        return node.value
    if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
        return [_build(loader, n) for n in node.value]
    if (
        isinstance(node, yaml.MappingNode)
        and node.tag == _TAG + "map"
        and all(
            isinstance(k, yaml.ScalarNode) and k.tag == _TAG + "str" and k.value != "<<"
            for k, _ in node.value
        )
    ):
        return {k.value: _build(loader, v) for k, v in node.value}
    return loader.construct_object(node, deep=True)


def duplicate_keys(node: yaml.Node) -> Iterator[tuple[int, int, str]]:
    """YAML keeps the last of two equal keys silently; a jobs file should not."""
    stack = [node]
    seen_nodes: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:  # aliases share nodes
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            yield from _mapping_duplicates(n)
            stack.extend(value for _, value in n.value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def _mapping_duplicates(n: yaml.MappingNode) -> Iterator[tuple[int, int, str]]:
    first: dict[str, int] = {}
    for key, _ in n.value:
        if isinstance(key, yaml.ScalarNode) and key.value != "<<":
            line = key.start_mark.line + 1
            if key.value in first:
                msg = f"duplicate key {key.value!r} (first on line {first[key.value]})"
                yield (line, key.start_mark.column + 1, msg)
            else:
                first[key.value] = line


def scan(root: yaml.Node) -> tuple[list[tuple[int, int, str]], bool]:
    """``duplicate_keys`` and whether an alias is used (a node reached twice), in one
    walk of the tree (keys included) instead of two."""
    duplicates: list[tuple[int, int, str]] = []
    seen: set[int] = set()
    aliased = False
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            aliased = True
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            duplicates.extend(_mapping_duplicates(n))
            for key, value in n.value:
                stack.extend((key, value))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return duplicates, aliased


# ---------------------------------------------------------------- the loader

_YAML_BASE: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class JobsLoader(_YAML_BASE):  # type: ignore[misc]  # a base chosen at import time
    """PyYAML's safe loader (libyaml when present) with YAML 1.2 style plain scalars.

    A scalar's tag depends only on its text and style (no path resolvers are set), so
    it is resolved once per distinct (text, style) in a file: keys like ``schedule:``
    repeat once per job.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[tuple[str, tuple[bool, bool]], str] = {}

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is not yaml.ScalarNode or self.yaml_path_resolvers:
            return str(super().resolve(kind, value, implicit))
        key = (value, implicit)
        tag = self._tags.get(key)
        if tag is None:
            tag = self._tags[key] = str(super().resolve(kind, value, implicit))
        return tag


def _yaml12_resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    tag = "tag:yaml.org,2002:"
    replaced = {
        tag + "bool": re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        tag + "int": re.compile(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
        ),
        tag + "float": re.compile(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
    }
    out: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = [(t, replaced.get(t, rx)) for t, rx in resolvers if t != tag + "timestamp"]
        if kept:
            out[first] = kept
    return out


JobsLoader.yaml_implicit_resolvers = _yaml12_resolvers()
