"""The quantization-method registry: one consistent entry per plan method, and no code outside a
method's own module that compares method names."""

import ast
import typing
from pathlib import Path

import pytest

from pydantic import ValidationError

from compress.quantization import QuantizeConfig
from compress.quantization.methods import METHODS, method, method_modules, option_classes
from compress.quantization.registry import Grid, Layout, OnnxForm

ROOT = Path(__file__).resolve().parents[3]


def test_every_plan_method_has_one_entry_and_back():
    literal = typing.get_args(QuantizeConfig.model_fields["method"].annotation)
    assert literal == tuple(METHODS) and len(set(literal)) == len(literal)
    assert {"rtn", "gptq", "smoothquant", "bnb-int8", "bnb-nf4", "bnb-fp4", "dynamic-int8", "awq",
            "ort-int4", "ort-int8", "ort-dynamic-int8"} == set(literal)
    assert all(method(n).name == n for n in literal)


@pytest.mark.parametrize("name", list(METHODS))
def test_entry_attributes_are_consistent(name):
    m = method(name)
    assert m.bits and set(m.bits) <= {4, 8} and m.default_bits == m.bits[0]
    assert m.exportable == (m.onnx is not None and not m.onnx.in_graph) == m.layout.has_handoff
    # a form applied in the ONNX graph <-> fp32 weights on disk (the export's graph pass quantizes)
    assert (m.onnx is not None and m.onnx.in_graph) == (m.layout is Layout.ONNX_GRAPH)
    if m.onnx is OnnxForm.MATMUL_NBITS:
        assert m.layout is Layout.PACKED and m.grid is Grid.GROUPS
    if m.onnx is OnnxForm.QDQ_W8A8:
        assert m.layout is Layout.INT8 and m.bits == (8,)
    assert (m.grid is Grid.OWN) == (m.layout is Layout.BITSANDBYTES or m.onnx is OnnxForm.ORT_DYNAMIC_INT8)
    assert m.int8_activations == (name in ("smoothquant", "dynamic-int8", "ort-dynamic-int8"))
    assert callable(m.run) and m.summary
    for field in m.options.model_fields:  # every option is a QuantizeConfig field
        assert field in QuantizeConfig.model_fields


OPTION_FIELDS = [(cls, f) for cls in option_classes() for f in cls.model_fields]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("cls,field", OPTION_FIELDS, ids=[f for _, f in OPTION_FIELDS])
def test_an_option_is_accepted_by_exactly_the_methods_that_read_it(name, cls, field):
    if method(name).requires:
        pytest.importorskip(method(name).requires[0])
    value = cls.model_fields[field].default
    if field in method(name).options.model_fields:
        assert getattr(QuantizeConfig(method=name, **{field: value}), field) == value
    else:
        with pytest.raises(ValidationError) as e:
            QuantizeConfig(method=name, **{field: value})
        (err,) = e.value.errors()
        assert err["loc"] == (field,) and f"{field} applies to method" in err["msg"] and f"not {name}" in err["msg"]


def _about_a_method(node: ast.AST) -> bool:
    """Whether an expression reads something called method (cfg.method, details["method"], method)."""
    for n in ast.walk(node):
        if (isinstance(n, ast.Name) and "method" in n.id) or (isinstance(n, ast.Attribute) and "method" in n.attr) \
                or (isinstance(n, ast.Constant) and n.value == "method"):
            return True
    return False


def _compares_a_method_name(node: ast.AST) -> str | None:
    """The method name that a comparison or .startswith() of a method tests against, if any."""
    names = set(METHODS) | {"bnb-"}
    if not _about_a_method(node):
        return None
    if isinstance(node, ast.Compare):
        for c in [node.left, *node.comparators]:
            consts = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
            for k in consts:
                if isinstance(k, ast.Constant) and k.value in names:
                    return k.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith":
        for a in node.args:
            if isinstance(a, ast.Constant) and a.value in names:
                return a.value
    return None


@pytest.mark.parametrize("code,found", [
    ('cfg.method == "gptq"', "gptq"), ('details["method"].startswith("bnb-")', "bnb-"),
    ('method in ("rtn", "awq")', "rtn"), ('cfg.quantize == "dynamic-int8"', None), ('cfg.method == other', None)])
def test_the_name_switch_finder_finds_them(code, found):
    node = ast.parse(code).body[0].value
    assert _compares_a_method_name(node) == found


def test_no_method_name_switches_outside_the_methods_own_modules():
    own = {ROOT / (m.replace(".", "/") + ".py") for m in method_modules()}  # bnb.py: int8 vs 4-bit layers
    found = []
    for pkg in ("compress", "export", "evalsuite"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path in own:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                name = _compares_a_method_name(node)
                if name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} compares {name!r}")
    assert found == [], "look the method's attribute up in its registry entry instead:\n" + "\n".join(found)


@pytest.mark.parametrize("name, group", [("ort-int4", 32), ("ort-int8", 256), ("ort-dynamic-int8", None)])
def test_methods_applied_in_the_graph_keep_the_weights_and_record_the_method(name, group, tmp_path):
    """ort-*: the torch weights stay fp32 (saved and reloaded as such, with the method in config.json), and
    the export finds the method's OnnxForm on the model; the MatMulNBits block need not divide the widths."""
    import torch

    from compress.models import load_model, save_model
    from compress.quantization import quantize
    from compress.quantization.storage import codes_in_dir
    from export.onnx_quant import ORT_PASSES, graph_quantization
    from tests.tiny_models import tiny_model

    options = {"group_size": group} if group else {"allow_outliers": True}
    cfg = QuantizeConfig(method=name, **options)
    assert not cfg.width_problems({"attn.c_attn": 48, "mlp.c_proj": 100, "lm_head": 48})
    model = tiny_model(seed=3)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        q = quantize(model, cfg)
        path = save_model(q, tmp_path / name)
        again = load_model(path)
        torch.testing.assert_close(again(ids).logits, before, atol=1e-5, rtol=0)
    assert not codes_in_dir(path)
    found = graph_quantization(again, {})
    assert found.form is method(name).onnx and found.form in ORT_PASSES and found.group_size == group


def test_every_methods_run_function_resolves():
    """The table names each run function as a string (imported on first call): a typo there would only
    fail when a plan runs that method."""
    for m in METHODS.values():
        assert callable(m.run.resolve()), m.name
