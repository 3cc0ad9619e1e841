"""Fixtures of the compress tests."""

import pytest


@pytest.fixture
def no_model_loads(monkeypatch):
    """A plan is validated before any model loads: make loading one fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded during plan validation")

    monkeypatch.setattr("transformers.GPT2LMHeadModel.from_pretrained", refuse)
