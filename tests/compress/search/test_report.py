"""The search report's comparisons, on hand-made trial records (no model)."""

from __future__ import annotations

from compress.search.report import misranked, same_size_rivals


def trial(label: str, mb: float, ppl: float, kl: float, overrides: dict | None = None, shape: str = "w0-m0-l0"):
    quantize = {"method": "gptq", "bits": 4} | ({"overrides": overrides} if overrides else {})
    return {"label": label, "mb": mb, "ppl": ppl, "ppl_ratio": ppl / 50.0,
            "candidate": {"quantize": quantize, "shape_key": shape, "predicted_kl": kl}}


def test_each_uniform_trial_meets_the_best_mixed_one_at_its_size_or_less():
    trials = [trial("u128", 17.6, 51.0, 0.009), trial("u32", 20.4, 50.6, 0.0066),
              trial("m18", 18.5, 50.5, 0.008, {"h.0.*": {"bits": 8}}),
              trial("m20", 20.4, 50.4, 0.0058, {"h.0.*": {"bits": 8}}),
              trial("m-other-shape", 10.0, 40.0, 0.001, {"h.0.*": {"bits": 8}}, shape="w0.33-m0-l0")]
    rows = same_size_rivals(trials)
    assert len(rows) == 1  # u128 has no mixed rival of its shape at 17.6 MB or less
    assert rows[0].startswith("| u32 |") and "| m20 |" in rows[0] and rows[0].endswith("| mixed better |")


def test_misranked_names_the_pairs_the_prediction_ordered_wrong():
    trials = [trial("a", 20.0, 50.6, 0.005), trial("b", 19.0, 50.4, 0.006), trial("c", 18.0, 51.0, 0.009)]
    wrong = misranked(trials)
    assert len(wrong) == 1 and "predicted a" in wrong[0] and "than b" in wrong[0]
