"""Float32 linears through oneDNN with packed weights (`rollout/packed_linears.py`): the same products,
weights that follow every update, gradients on the stock path, and the module given back."""

from __future__ import annotations

import pytest
import torch

from appo.rollout import packed_linears as pl
from appo.rollout.engine import GenRequest
from appo.rollout.hf import HFEngine
from appo.rollout.packed_linears import forget_packed, packed_linears, pays_on

from .conftest import chat_prompt as _prompt

needs_onednn = pytest.mark.skipif(not pl.available(), reason="this torch has no oneDNN on this CPU")


@pytest.fixture
def packs(monkeypatch):
    """Counts the weights packed."""
    calls = []
    real = pl._pack

    def counted(weight):
        calls.append(weight.shape)
        return real(weight)

    monkeypatch.setattr(pl, "_pack", counted)
    return calls


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 1, 48), (2, 1, 48), (7, 1, 48), (40, 48), (3, 100, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_outputs_equal_the_float64_product_as_closely_as_the_stock_linear(shape, bias, packs):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 81, bias=bias)
    x = torch.randn(*shape)
    exact = torch.nn.functional.linear(x.double(), layer.weight.double(),
                                       None if layer.bias is None else layer.bias.double())
    with torch.no_grad():
        stock = layer(x)
        with packed_linears(layer, enabled=True):
            got = layer(x)
    assert packs, "the packed path did not run"
    assert got.shape == stock.shape and got.dtype == torch.float32
    stock_err = (stock.double() - exact).abs().max().item()
    assert (got.double() - exact).abs().max().item() <= max(4 * stock_err, 1e-5)


@needs_onednn
def test_a_weight_is_packed_once_and_again_after_every_update(packs):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(3, 16)
    for _ in range(3):
        with torch.no_grad(), packed_linears(layer, enabled=True):
            first = layer(x)
            again = layer(x)
        torch.testing.assert_close(first, again, rtol=0, atol=0)
        torch.testing.assert_close(first, torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-6)
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        opt.step()  # in place: the next block must see the new weight
    assert len(packs) == 3  # once per weight version, across blocks
    with torch.no_grad():
        layer.weight.copy_(torch.zeros_like(layer.weight))
        with packed_linears(layer, enabled=True):
            torch.testing.assert_close(layer(x), layer.bias.expand(3, -1))


@needs_onednn
def test_reassigned_data_is_seen_after_forget_packed(packs):
    # Trading storage back and forth (the learner's previous-weights swap) leaves the parameter's version
    # and, on the second swap, its storage as they were, while the other tensor's values changed.
    layer = torch.nn.Linear(4, 4, bias=False)
    other = torch.ones(4, 4)
    x = torch.ones(1, 4)
    with torch.no_grad(), packed_linears(layer, enabled=True):
        layer.weight.data, other.data = other.data, layer.weight.data
        assert layer(x).tolist() == [[4.0] * 4]
        layer.weight.data, other.data = other.data, layer.weight.data
        other.mul_(2)
        layer.weight.data, other.data = other.data, layer.weight.data
        forget_packed()
        assert layer(x).tolist() == [[8.0] * 4]


@needs_onednn
def test_forwards_that_track_gradients_take_the_stock_path(packs):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).sum().backward()
    expected = (x.grad.clone(), layer.weight.grad.clone())
    x.grad = layer.weight.grad = None
    with packed_linears(layer, enabled=True):
        layer(x).sum().backward()
    assert not packs
    torch.testing.assert_close((x.grad, layer.weight.grad), expected, rtol=0, atol=0)


def test_the_module_is_restored_after_the_block_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(RuntimeError), packed_linears(model, enabled=True):
        assert all("forward" in m.__dict__ for m in model if isinstance(m, torch.nn.Linear))
        raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in model)


def test_nested_blocks_leave_the_outer_one_in_force():
    layer = torch.nn.Linear(4, 4)
    with packed_linears(layer, enabled=True):
        with packed_linears(layer, enabled=True):
            pass
        assert "forward" in layer.__dict__
    assert "forward" not in layer.__dict__


def test_disabled_the_block_leaves_the_module_alone():
    layer = torch.nn.Linear(4, 4)
    with packed_linears(layer, enabled=False):
        assert "forward" not in layer.__dict__


@needs_onednn
@pytest.mark.parametrize("pays", [True, False])
def test_the_engine_samples_through_them_where_they_pay(pays, tiny_model, tiny_tokenizer, monkeypatch, packs):
    monkeypatch.setattr(pl, "pays_on_this_cpu", lambda: pays)
    forget_packed()
    linears = [m for m in tiny_model.modules() if type(m) is torch.nn.Linear]
    engine = HFEngine(tiny_model, tiny_tokenizer, max_batch_size=4, seed=0)
    first = engine.generate([GenRequest(_prompt(tiny_tokenizer, "hi"), 5, seed=1)])
    session = engine.open_session()
    session.add("k", GenRequest(_prompt(tiny_tokenizer, "hi"), 5, seed=1))
    done = []
    while len(session):
        done += session.step()
    assert len(packs) == (len(linears) if pays else 0)  # packed once for both calls
    assert done[0][1].token_ids == first[0].token_ids
    assert not any("forward" in m.__dict__ for m in linears)


def test_they_are_on_by_default_on_amd_cpus_only():
    # Measured faster on AMD EPYC; on Intel, MKL (Intel's own) was already fast and packing is unmeasured.
    assert pays_on("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert not pays_on("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert not pays_on("")  # unknown (no /proc/cpuinfo, another architecture): the stock path
