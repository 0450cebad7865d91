"""Model loading: the grouped-query attention path on CPU gives the stock attention's numbers without
copying K/V heads."""

from __future__ import annotations

import torch
import transformers.integrations.sdpa_attention as stock_sdpa
from transformers import AttentionInterface

from appo.models import load_model


def _padded_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, so a mask reaches attention
    mask[2, :2] = 0
    return ids, mask


def _forward_and_grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    (out.logits * mask[..., None]).sum().backward()
    step = model(input_ids=ids[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1),
                 position_ids=pos[:, -1:] + 1, past_key_values=out.past_key_values)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.logits.detach(), step.logits.detach(), grads


def test_grouped_attention_matches_the_stock_path_and_copies_no_heads(tiny_model_dir, monkeypatch):
    model = load_model(str(tiny_model_dir))
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped
    ids, mask = _padded_batch()
    with monkeypatch.context() as m:
        m.setitem(AttentionInterface._global_mapping, "sdpa", stock_sdpa.sdpa_attention_forward)
        want = _forward_and_grads(model, ids, mask)

    def no_copies(*_):
        raise AssertionError("K/V heads were copied for a masked CPU batch")

    monkeypatch.setattr(stock_sdpa, "repeat_kv", no_copies)
    got = _forward_and_grads(model, ids, mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

