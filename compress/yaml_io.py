"""Reading a plan file: UTF-8 text, a small file, and YAML whose aliases cannot explode.

`yaml.safe_load` shares an aliased node instead of copying it, but everything downstream (pydantic
validation, hashing, the key-path walk) sees the expanded tree: a dozen nested anchors ("billion
laughs") become 10^12 nodes. The loader here composes the document once, counts the nodes of its
expansion (memoised per node, so counting is linear in the document), and refuses it above
MAX_EXPANDED_NODES, when an alias refers to itself, or when a mapping repeats a key
(PyYAML would keep the last silently). Every failure is a one-line PlanFileError naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compress.errors import PlanFileError

MAX_PLAN_BYTES = 1 << 20  # a plan is a page of YAML; 1 MiB is far more than any real one
MAX_EXPANDED_NODES = 100_000  # nodes after alias expansion (a large real plan has a few hundred)


def read_yaml_file(path: Path) -> tuple[Any, yaml.Node | None]:
    """(data, composed root node) of a YAML file; PlanFileError (one line) when it cannot be one."""
    path = Path(path)
    if path.is_dir():
        raise PlanFileError("is a directory, not a plan file", source=str(path))
    if not path.exists():
        raise PlanFileError("plan file not found", source=str(path))
    if not path.is_file():  # a FIFO or a device would block or never end
        raise PlanFileError("is not a regular file, not a plan file", source=str(path))
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise PlanFileError(f"the file is {size:,} bytes; a plan is a small YAML file "
                                f"(at most {MAX_PLAN_BYTES:,} bytes)", source=str(path))
        data = path.read_bytes()
    except OSError as e:
        raise PlanFileError(f"cannot read the plan file ({e.strerror})", source=str(path)) from None
    return load_bounded(decode_text(data, str(path)), str(path))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is allowed); binary data or another encoding is a PlanFileError saying where."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise PlanFileError(f"binary data (a NUL byte at offset {nul}), not a YAML plan",
                            source=source)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PlanFileError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} (offset {e.start}); "
                         "save the plan as UTF-8", source=source) from None


def load_bounded(text: str, source: str | None = None) -> tuple[Any, yaml.Node | None]:
    """yaml.safe_load, with the expansion bound; also returns the composed root for line numbers."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_expansion(root, source)
        return loader.construct_document(root), root
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PlanFileError(f"invalid YAML{where}: {problem}", source=source) from None
    except RecursionError:
        raise PlanFileError("invalid YAML: nested too deeply", source=source) from None
    finally:
        loader.dispose()


def parse_yaml_value(value: str) -> Any:
    """A `--set` value parsed as YAML (bounded like a plan); ValueError saying why it is not one."""
    try:
        return load_bounded(value)[0]
    except PlanFileError as e:
        problem = e.problems[0].removeprefix("invalid YAML")
        raise ValueError(f"the value {value!r} is not valid YAML{problem}; quote it to pass a string") from None


def _check_expansion(root: yaml.Node, source: str | None) -> None:
    """Count the nodes of the alias-expanded tree without expanding it; refuse a cycle or a bomb."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative post-order: a deep document cannot overflow Python's stack here
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if not children_done and isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, source)
        if not children_done:
            if key in open_:
                raise PlanFileError(f"invalid YAML (line {node.start_mark.line + 1}): an alias refers to its own "
                                    "anchor (a recursive structure)", source=source)
            open_.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        open_.discard(key)
        sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
        if sizes[key] > MAX_EXPANDED_NODES:
            raise PlanFileError(f"invalid YAML (line {node.start_mark.line + 1}): aliases expand to more than "
                                f"{MAX_EXPANDED_NODES:,} nodes (an alias bomb?); write the values out",
                                source=source)


def _check_unique_keys(node: yaml.MappingNode, source: str | None) -> None:
    """PyYAML keeps the last of two equal keys without a word; a plan that says a thing twice is refused."""
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            line = key.start_mark.line + 1
            if key.value in seen:
                raise PlanFileError(f"invalid YAML (line {line}): duplicate key {key.value!r} (first on line "
                                    f"{seen[key.value]})", source=source)
            seen[key.value] = line


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
