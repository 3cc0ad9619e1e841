"""Where a plan problem is, and how it reads: pydantic locations as YAML key paths ('steps[2].quantize.bits'),
the YAML line of a key path, `--set a.b=v` overrides, and one-line messages with a "did you mean" for an
unknown key (the closest field name of the model(s) that hold it)."""

from __future__ import annotations

import difflib
import json
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag

from compress.yaml_io import parse_yaml_value

_UNION_TAGS = {"source", "dir", "train", "pretrain"}


def format_loc(loc: tuple) -> str:
    """('steps', 2, 'quantize', 'bits') -> 'steps[2].quantize.bits' (union tags dropped)."""
    out = ""
    for part in clean_loc(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(plan)"


def message(err: dict, root: type | None = None) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        hint = close_key(root, err["loc"]) if root is not None else None
        return "unknown key" + (f"; did you mean '{hint}'?" if hint else "")
    if err["type"] == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    if err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {json.dumps(err['input'], default=str)})"
    return msg


def clean_loc(loc: tuple) -> tuple:
    """The YAML key path of a pydantic location (union tags dropped)."""
    out: list = []
    for part in loc:
        if out and part == out[-1] and part in _UNION_TAGS:
            continue
        if part in ("source", "dir") and out and out[-1] in ("model", "tokenizer"):
            continue
        out.append(part)
    return tuple(out)


def line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    """Line of the deepest existing YAML node on the path (the key itself when it exists)."""
    loc = clean_loc(loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def node_lines(root: yaml.Node | None) -> dict[tuple, int]:
    """Key path -> line of a composed document. A node reached again through an alias is not walked
    again (a path through an alias reports the alias's line), so an alias bomb costs linear time."""
    out: dict[tuple, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                out[(*path, key.value)] = key.start_mark.line + 1
                children.append((value, (*path, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[(*path, i)] = item.start_mark.line + 1
                children.append((item, (*path, i)))
        stack.extend(reversed(children))  # depth first in document order: an anchor before its aliases
    return out


def override_path(item: str) -> tuple:
    """`steps.0.prune.mlp=0.3` -> ('steps', 0, 'prune', 'mlp'), the form of a cleaned error location."""
    return tuple(int(p) if p.isdigit() else p for p in item.partition("=")[0].split("."))


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `a.b.0.c=value` (value parsed as YAML) to the raw plan dict, in place."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError("expected KEY.PATH=VALUE")
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"{'.'.join(parts[:depth + 1])}: no list item {part}")
            part = int(part)
        elif isinstance(node, dict):
            if not last and part not in node:
                if parts[depth + 1].isdigit():
                    raise ValueError(f"{'.'.join(parts[:depth + 1])}: no such list in the plan")
                node[part] = {}
        else:
            raise ValueError(f"{'.'.join(parts[:depth])} is not a mapping or list")
        if last:
            node[part] = parse_yaml_value(value)
        else:
            node = node[part]


def close_key(root: type, loc: tuple) -> str | None:
    """The closest valid key (difflib) to the unknown key loc[-1], among the fields of the model(s) that
    hold it: the location is walked from `root` through field types, list items and union tags."""
    models = _models_in(root)
    dict_key = False  # the part is a key of a dict field (quantize.overrides' patterns), not a field
    for part in loc[:-1]:
        if isinstance(part, int) or dict_key:
            dict_key = False
            continue  # a list index or dict key: the item types are already the candidates
        tagged = [(cls, None) for cls, tag in models if tag == part]
        if tagged:  # pydantic names the union member it tried (Tag("pretrain")) in the location
            models = tagged
            continue
        fields = [cls.model_fields[part].annotation for cls, _ in models if part in cls.model_fields]
        dict_key = any(_is_dict(a) for a in fields)
        models = [m for a in fields for m in _models_in(a)]
        if not models:
            return None
    known = {f.alias or name for cls, _ in models for name, f in cls.model_fields.items()}
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _is_dict(annotation: Any) -> bool:
    """A dict annotation, or an Optional / union holding one."""
    origin = get_origin(annotation)
    return origin is dict or (origin in (Union, UnionType) and any(get_origin(a) is dict for a in get_args(annotation)))


def _models_in(annotation: Any, tag: str | None = None) -> list[tuple[type, str | None]]:
    """(pydantic model class, its union Tag) for every model an annotation can hold (unions, Annotated,
    Optional, list / dict items)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), tag)
        return _models_in(base, tag)
    if origin in (Union, UnionType, list, tuple, set, frozenset):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    if origin is dict:
        return _models_in(get_args(annotation)[-1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, tag)]
    return []
