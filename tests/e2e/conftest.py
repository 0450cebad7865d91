"""Fixtures shared by the end-to-end training tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    """Eight addition questions in the benchmark JSONL format ({question, answer})."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"question": f"Calculate {a} + {b}.", "answer": str(a + b)} for a, b in
            ((3, 4), (12, 30), (7, 8), (100, 23), (5, 5), (40, 2), (9, 90), (61, 6))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_trained_checkpoint(hf_dir, start_dir) -> None:
    """The saved Hugging Face directory loads with transformers, runs, and differs from the start weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = torch.tensor([tok.encode("Calculate 1 + 2.")])
    assert torch.isfinite(model(ids).logits).all()
    start = AutoModelForCausalLM.from_pretrained(start_dir)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values(),
                                                     strict=True))
