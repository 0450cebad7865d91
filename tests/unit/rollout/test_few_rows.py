"""Decode-step linears for a few rows on CPU (`rollout/few_rows.py`): same products, only within the block."""

from __future__ import annotations

import pytest
import torch

from appo.rollout import few_rows
from appo.rollout.engine import GenRequest
from appo.rollout.few_rows import MAX_ROWS, few_row_linears, pays_on
from appo.rollout.hf import HFEngine

from .conftest import chat_prompt as _prompt


@pytest.mark.parametrize("rows", [1, 2, 3, 7, MAX_ROWS, MAX_ROWS + 5])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out_features", [80, 81])  # 81: no even split over 2 threads for one row
def test_outputs_equal_the_stock_linear(rows, bias, out_features):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, out_features, bias=bias)
    x = torch.randn(rows, 1, 48)  # [rows, one decode position, features]
    expected = layer(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with few_row_linears(layer, enabled=True):
            got = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_module_is_restored_after_the_block_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(RuntimeError), few_row_linears(model, enabled=True):
        assert all("forward" in m.__dict__ for m in model if isinstance(m, torch.nn.Linear))
        raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in model)


def test_nested_blocks_leave_the_outer_one_in_force():
    layer = torch.nn.Linear(4, 4)
    with few_row_linears(layer, enabled=True):
        with few_row_linears(layer, enabled=True):
            pass
        assert "forward" in layer.__dict__
    assert "forward" not in layer.__dict__


@pytest.mark.parametrize("pays", [True, False])
def test_the_engine_decodes_with_them_where_they_pay_and_gives_the_module_back(pays, tiny_model, tiny_tokenizer,
                                                                              monkeypatch):
    monkeypatch.setattr(few_rows, "pays_on_this_cpu", lambda: pays)
    linears = [m for m in tiny_model.modules() if type(m) is torch.nn.Linear]
    seen = []
    hook = linears[0].register_forward_pre_hook(lambda m, args: seen.append("forward" in m.__dict__))
    engine = HFEngine(tiny_model, tiny_tokenizer, max_batch_size=4, seed=0)
    engine.generate([GenRequest(_prompt(tiny_tokenizer, "hi"), 5, seed=1)])
    session = engine.open_session()
    session.add("k", GenRequest(_prompt(tiny_tokenizer, "hello"), 3, seed=2))
    while len(session):
        session.step()
    hook.remove()
    assert seen and all(s == pays for s in seen)
    assert not any("forward" in m.__dict__ for m in linears)


def test_they_pay_on_amd_cpus_only():
    # MKL's slow path for 2-8 row products was measured on AMD EPYC; on an Intel Xeon (with AMX) the
    # stock orientation was the faster one (see the module docstring).
    assert pays_on("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert not pays_on("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert not pays_on("")  # unknown (no /proc/cpuinfo, another architecture): the stock path


def test_disabled_the_block_leaves_the_module_alone():
    layer = torch.nn.Linear(4, 4)
    with few_row_linears(layer, enabled=False):
        assert "forward" not in layer.__dict__
