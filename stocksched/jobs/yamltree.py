"""Walking and building a jobs file's YAML node tree (``stocksched.jobs.loader`` parses).

``scan``: duplicate keys and aliases in one walk; ``construct``: the document PyYAML's
constructor would build, faster for the plain nodes a jobs file is made of.
"""

from __future__ import annotations

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
