"""Reading the plan file: one line for a file that is not a small UTF-8 YAML document."""

import pytest

from compress.errors import PlanError, PlanFileError
from compress.plan import load_plan
from compress.plan_locations import node_lines
from compress.yaml_io import MAX_EXPANDED_NODES, load_bounded, parse_yaml_value

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(10))  # 9^11 nodes


def one_line(path, overrides=()):
    with pytest.raises(PlanError) as e:
        load_plan(path, overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_binary_and_non_utf8_plans(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"PK\x03\x04\x00\x00\xff\xfe")
    assert one_line(tmp_path / "bin.yaml") == f"{tmp_path / 'bin.yaml'}: binary data (a NUL byte at offset 4), not a YAML plan"
    (tmp_path / "latin1.yaml").write_bytes("name: x\n# caf\xe9\n".encode("latin-1"))
    assert one_line(tmp_path / "latin1.yaml").endswith("not UTF-8 text: byte 0xe9 at line 2 (offset 13); "
                                                       "save the plan as UTF-8")
    (tmp_path / "bom.yaml").write_bytes("\ufeffname: [".encode("utf-8"))
    assert "invalid YAML (line 1" in one_line(tmp_path / "bom.yaml")  # a BOM is fine; the YAML is not


def test_directory_huge_and_missing_plans(tmp_path):
    assert one_line(tmp_path).endswith(": is a directory, not a plan file")
    (tmp_path / "big.yaml").write_bytes(b"#" * (2 << 20))
    assert "a plan is a small YAML file" in one_line(tmp_path / "big.yaml")
    assert one_line(tmp_path / "nope.yaml").endswith("nope.yaml: plan file not found")


def test_alias_bomb_is_refused_without_expanding_it(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB + "name: x\n")
    assert f"aliases expand to more than {MAX_EXPANDED_NODES:,} nodes (an alias bomb?)" in one_line(tmp_path / "bomb.yaml")
    with pytest.raises(PlanFileError):  # the line walk never sees it: composing refuses it first
        load_bounded(BOMB)


def test_recursive_alias_and_deep_nesting(tmp_path):
    with pytest.raises(PlanFileError, match="an alias refers to its own anchor"):
        load_bounded("a: &a [1, *a]\n")
    with pytest.raises(PlanFileError, match="nested too deeply"):
        load_bounded("[" * 3000 + "]" * 3000)


def test_modest_aliases_still_work_and_map_lines():
    data, _ = load_bounded("base: &b {mlp: 0.5}\nsteps:\n  - prune: *b\n  - prune: *b\n")
    assert data["steps"] == [{"prune": {"mlp": 0.5}}] * 2
    lines = node_lines(load_bounded("base: &b {mlp: 0.5}\nsteps:\n  - prune: *b\n")[1])
    assert lines[("base", "mlp")] == 1 and lines[("steps", 0, "prune")] == 3


def test_set_values_that_are_not_yaml():
    assert parse_yaml_value("[1, 2]") == [1, 2]
    with pytest.raises(ValueError, match=r"the value '\[1' is not valid YAML \(line 1, column 3\).*quote it"):
        parse_yaml_value("[1")


def test_a_key_said_twice_is_refused():
    with pytest.raises(PlanFileError, match=r"line 3\): duplicate key 'name' \(first on line 1\)"):
        load_bounded("name: a\nseed: 1\nname: b\n", "p.yaml")
