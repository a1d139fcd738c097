"""YAML to plain Python values, with the line of every mapping key and list item kept aside.

``yaml.safe_load`` forgets where things were; an error in a 300-line topology file must say
"line 212, field topology.nodes.r7.mgmt-ipv4". So the file is *composed* (PyYAML's node tree
has marks) and converted here: every value gets a path (``("topology", "nodes", "r1")``) and
the path's line goes into a side table.

Hostile files: a size cap, duplicate keys refused (``safe_load`` silently keeps the last one,
which hides mistakes), keys must be scalars, and a cap on converted nodes, since aliases let a
tiny file expand exponentially ("billion laughs").
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple[str | int, ...]
# libyaml's composer when PyYAML was built with it: the same node tree with the same marks, ~20x
# faster than the pure-Python one (0.2 s of a 200-node lab's deploy; issue 10 item 5).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_BYTES = 1 << 20
MAX_NODES = 200_000


class YamlError(ValueError):
    """A file that is not usable YAML; ``line`` is 1-based (0 when unknown)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def load(text: str) -> tuple[Any, dict[Path, int]]:
    """The document as dicts/lists/scalars, and ``{path: line}`` for every key and item."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlError(0, f"file is larger than {MAX_BYTES} bytes")
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        budget = [MAX_NODES]
        return _convert(loader, node, (), lines, budget), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlError(line, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(0, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _convert(loader: Any, node: yaml.Node, path: Path, lines: dict[Path, int],
             budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise YamlError(node.start_mark.line + 1, f"more than {MAX_NODES} values (aliases expanding?)")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)                    # YAML merge keys ("<<: *defaults")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(line, "a mapping key must be a plain value")
            key = loader.construct_object(key_node)
            key = key if isinstance(key, str) else str(key)
            if key in out:
                raise YamlError(line, f"key {key!r} given twice in one mapping")
            lines[(*path, key)] = line
            out[key] = _convert(loader, value_node, (*path, key), lines, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            items.append(_convert(loader, item, (*path, index), lines, budget))
        return items
    return loader.construct_object(node)
