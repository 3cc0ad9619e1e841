"""The target catalog and the decode roofline, checked against hand-computed cases."""

from __future__ import annotations

import platform

import pytest

from evalsuite import hardware
from evalsuite.metrics import ModelFacts, host_roofline, projections


def test_kv_bytes_hand_computed():
    # GPT-2 small at 1024 cached positions, fp16: K and V x 12 layers x 1024 x 768 x 2 bytes.
    assert hardware.kv_bytes_per_token(12, 768, 1024, 2) == 2 * 12 * 1024 * 768 * 2 == 37_748_736


def test_projection_hand_computed():
    # 68 GB/s, 50 MB of weights, 4 layers x 256 wide at 256 positions in fp16 (1 MiB of KV):
    # 68e9 / (50e6 + 1_048_576) = 1332.06... tokens/s.
    kv = hardware.kv_bytes_per_token(4, 256, 256, 2)
    assert kv == 1_048_576
    assert hardware.projected_decode_tokens_per_s(68.0, 50_000_000, kv) == pytest.approx(1332.06, abs=0.01)
    # Batch 4: one pass over the weights serves four sequences, each reading its own cache.
    assert hardware.projected_decode_tokens_per_s(68.0, 50_000_000, kv, batch=4) == pytest.approx(
        4 * 68e9 / (50_000_000 + 4 * 1_048_576))


def test_projections_per_target_use_catalog_bandwidth():
    facts = ModelFacts(params=25_000_000, n_layer=4, n_embd=256, weight_bytes=50_000_000)
    out = projections(facts, ("orin-nano", "agx-orin"), context=256)
    assert out["orin-nano"] == pytest.approx(1332.06, abs=0.01)
    assert out["agx-orin"] / out["orin-nano"] == pytest.approx(204.8 / 68.0)


def test_host_roofline_ratio(monkeypatch):
    monkeypatch.setattr(hardware, "measure_host_bandwidth", lambda: 10.0)
    facts = ModelFacts(params=1, n_layer=2, n_embd=64, weight_bytes=1_000_000)
    r = host_roofline(facts, context=100, batch=1, measured_tokens_per_s=2_000.0)
    projected = 10e9 / (1_000_000 + 2 * 2 * 100 * 64 * 4)  # the host's KV cache is fp32
    assert r["projected_tokens_per_s"] == pytest.approx(projected)
    assert r["measured_over_projected"] == pytest.approx(2_000.0 / projected)


def test_catalog_is_complete_and_cited():
    assert set(hardware.TARGETS) == {"orin-nano", "orin-nx", "agx-orin", "h100", "h200"}
    assert hardware.KNOWN_TARGETS[-1] == hardware.HOST
    for name, t in hardware.TARGETS.items():
        assert t.name == name and t.memory_bandwidth_gb_s > 0 and t.int8_tops and "sheet" in t.source
    assert hardware.TARGETS["h200"].memory_bandwidth_gb_s > hardware.TARGETS["h100"].memory_bandwidth_gb_s
    with pytest.raises(KeyError, match="known: orin-nano"):
        hardware.target("orin-mega")


def test_roofline_fraction():
    assert hardware.roofline_fraction(50.0, 200.0) == 0.25
    assert hardware.roofline_fraction(None, 200.0) is None


def test_host_bandwidth_is_measured():
    bw = hardware.measure_host_bandwidth(n_bytes=4 * 2**20, repeats=2)
    assert 0.1 < bw < 10_000  # GB/s: any real machine lands here


def test_host_cpu_names_the_model_and_its_widest_vector_isa(tmp_path):
    block = "processor\t: {n}\nmodel name\t: {name}\ncpu family\t: {fam}\nmodel\t\t: {model}\nflags\t\t: {flags}\n\n"
    zen4 = tmp_path / "zen4"
    zen4.write_text(block.format(n=0, name="AMD EPYC", fam=25, model=17, flags="fpu avx2 avx512f avx512_vnni")
                    + block.format(n=1, name="other", fam=1, model=1, flags="fpu"))
    assert hardware.host_cpu(zen4) == "AMD EPYC (family 25, model 17), AVX-512 + VNNI"
    rome = tmp_path / "rome"
    rome.write_text(block.format(n=0, name="AMD EPYC 7B12", fam=23, model=49, flags="fpu avx avx2 fma"))
    assert hardware.host_cpu(rome) == "AMD EPYC 7B12 (family 23, model 49), AVX2"
    # no /proc/cpuinfo (not Linux): platform's answer, never an error
    assert hardware.host_cpu(tmp_path / "missing") == (platform.processor() or platform.machine())
