"""The learner: teacher-forced log-probs, exact mini-batch aggregation, skips, LoRA and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from appo.config import ActorConfig, LoraConfig, ModelConfig
from appo.train.learner import Learner, UpdateBatch, lr_multiplier

torch.manual_seed(0)


def _rows(tok, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = len(tok)
    prompts = [torch.randint(5, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(5, vocab, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return prompts, responses


def _batch(learner, prompts, responses, seed=1):
    g = torch.Generator().manual_seed(seed)
    old, _ = learner.log_probs(prompts, responses)
    mask = torch.zeros_like(old)
    for i, r in enumerate(responses):
        mask[i, : len(r)] = 1.0
    mask[0, 0] = 0.0  # a tool-result token inside a response
    adv = torch.randn(len(prompts), 1, generator=g).expand_as(old) * mask
    return UpdateBatch(prompts, responses, mask, old - 0.05 * mask, adv.clone())


def _actor(**kw):
    base = dict(lr=1e-3, micro_batch_size=8, grad_clip=0.0, weight_decay=0.0)
    base.update(kw)
    return ActorConfig(**base)


def _learner(model, tok, actor=None, model_cfg=None, **kw):
    return Learner(model, actor or _actor(), model_cfg or ModelConfig(autocast="none"), pad_id=tok.pad_token_id,
                   **kw)


def test_log_probs_match_a_full_forward(tiny_model, tiny_tokenizer):
    prompts, responses = _rows(tiny_tokenizer, n=3)
    learner = _learner(tiny_model, tiny_tokenizer)
    lp, ent = learner.log_probs(prompts, responses, with_entropy=True, micro_batch_size=2)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            logits = tiny_model(torch.tensor([p + r])).logits[0].float()
        logp_all = logits.log_softmax(-1)[len(p) - 1: len(p) - 1 + len(r)]
        want = logp_all.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        torch.testing.assert_close(lp[i, : len(r)], want, atol=1e-5, rtol=1e-5)
        want_ent = -(logp_all.exp() * logp_all).sum(-1)
        torch.testing.assert_close(ent[i, : len(r)], want_ent, atol=1e-4, rtol=1e-4)
        assert torch.all(lp[i, len(r):] == 0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("loss_mode", ["vanilla", "future_kl"])
def test_micro_batches_accumulate_to_the_one_big_batch_gradient(tiny_model_dir, tiny_tokenizer, agg, loss_mode):
    from appo.models import load_model

    prompts, responses = _rows(tiny_tokenizer, n=6)
    grads = []
    for micro in (6, 2, 4):
        learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer,
                           _actor(micro_batch_size=micro, loss_agg_mode=agg, loss_mode=loss_mode))
        learner.update(_batch(learner, prompts, responses))
        grads.append(torch.cat([p.grad.flatten() for p in learner.params]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-6, rtol=1e-4)


def test_mean_of_micro_means_would_differ(tiny_model, tiny_tokenizer):
    """Guards the test above: unequal token counts make the naive average a different gradient."""
    from appo.core.loss import ppo_loss

    prompts, responses = _rows(tiny_tokenizer, n=6)
    learner = _learner(tiny_model, tiny_tokenizer)
    b = _batch(learner, prompts, responses)
    lp, _, _ = learner._forward(learner.model, prompts, responses, False)
    w = lp.shape[1]
    full, _ = ppo_loss(lp - lp.detach() + b.old_log_probs[:, :w], b.old_log_probs[:, :w], b.advantages[:, :w],
                       b.loss_mask[:, :w])
    halves = [ppo_loss(lp[s] - lp[s].detach() + b.old_log_probs[s, :w], b.old_log_probs[s, :w],
                       b.advantages[s, :w], b.loss_mask[s, :w])[0] for s in (slice(0, 2), slice(2, 6))]
    assert not math.isclose(float(full), float(sum(halves) / 2), rel_tol=1e-3)


def test_non_finite_step_is_skipped_and_counted(tiny_model, tiny_tokenizer):
    prompts, responses = _rows(tiny_tokenizer, n=4)
    learner = _learner(tiny_model, tiny_tokenizer, _actor(mini_batch_size=2, micro_batch_size=2))
    batch = _batch(learner, prompts, responses)
    batch.advantages[0, 1] = float("nan")  # poisons the first mini-batch only
    before = [p.detach().clone() for p in learner.params]
    metrics = learner.update(batch)
    assert metrics["actor/skipped_steps"] == 1.0 and metrics["actor/optimizer_steps"] == 1.0
    assert all(torch.isfinite(p).all() for p in learner.params)
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.params, strict=True))


def test_kl_loss_needs_and_uses_reference(tiny_model_dir, tiny_tokenizer):
    from appo.models import load_model

    prompts, responses = _rows(tiny_tokenizer, n=4)
    learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer,
                       _actor(use_kl_loss=True, kl_loss_coef=0.5), ref_model=load_model(str(tiny_model_dir)))
    batch = _batch(learner, prompts, responses)
    with pytest.raises(RuntimeError, match="reference log-probs"):
        learner.update(batch)
    batch.ref_log_probs, _ = learner.log_probs(prompts, responses, reference=True)
    torch.testing.assert_close(batch.ref_log_probs, batch.old_log_probs + 0.05 * batch.loss_mask.bool())
    metrics = learner.update(batch)
    assert metrics["actor/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the step
    metrics = learner.update(batch)
    assert metrics["actor/kl_loss"] > 0


def test_lora_trains_adapters_only_and_reference_is_the_base(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from appo.models import load_model
    from appo.train.checkpoint import save_hf

    prompts, responses = _rows(tiny_tokenizer, n=4)
    base = load_model(str(tiny_model_dir))
    base_lp, _ = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer).log_probs(prompts, responses)
    learner = _learner(base, tiny_tokenizer, _actor(lr=5e-2),
                       ModelConfig(autocast="none", lora=LoraConfig(rank=4, alpha=8)))
    assert learner.is_lora and learner.has_reference
    assert all("lora_" in n for n, p in learner.model.named_parameters() if p.requires_grad)
    for _ in range(3):
        learner.update(_batch(learner, prompts, responses))
    tuned_lp, _ = learner.log_probs(prompts, responses)
    ref_lp, _ = learner.log_probs(prompts, responses, reference=True)
    torch.testing.assert_close(ref_lp, base_lp, atol=1e-6, rtol=1e-5)
    assert (tuned_lp - base_lp).abs().max() > 1e-3
    save_hf(learner.model, tiny_tokenizer, tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    merged_lp, _ = _learner(merged, tiny_tokenizer).log_probs(prompts, responses)
    torch.testing.assert_close(merged_lp, tuned_lp, atol=1e-4, rtol=1e-4)


def test_lr_schedules():
    assert [lr_multiplier(s, 2, 10, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_multiplier(2, 2, 10, "linear") == 1.0 and lr_multiplier(6, 2, 10, "linear") == 0.5
    assert lr_multiplier(10, 2, 10, "linear") == 0.0
    assert lr_multiplier(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(10, 0, 10, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        lr_multiplier(5, 0, 10, "step")


def test_scheduler_drives_the_optimizer(tiny_model, tiny_tokenizer):
    prompts, responses = _rows(tiny_tokenizer, n=4)
    learner = _learner(tiny_model, tiny_tokenizer,
                       _actor(lr=1e-3, warmup_steps=2, lr_schedule="linear", mini_batch_size=1, micro_batch_size=1),
                       total_optimizer_steps=4)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    learner.update(_batch(learner, prompts, responses))
    assert learner.optimizer_steps == 4 and learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_snapshot_scores_with_the_weights_before_the_update(tiny_model, tiny_tokenizer):
    prompts, responses = _rows(tiny_tokenizer, n=4)
    learner = _learner(tiny_model, tiny_tokenizer)
    assert learner.previous_log_probs(prompts, responses) is None  # nothing to compare with yet
    before, _ = learner.log_probs(prompts, responses)
    learner.snapshot()
    learner.update(_batch(learner, prompts, responses))
    after, _ = learner.log_probs(prompts, responses)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(learner.previous_log_probs(prompts, responses), before)
    torch.testing.assert_close(learner.log_probs(prompts, responses)[0], after)  # weights swapped back
    restored = _learner(tiny_model, tiny_tokenizer)
    restored.load_state_dict(learner.state_dict())
    torch.testing.assert_close(restored.previous_log_probs(prompts, responses), before)


@pytest.mark.parametrize("loss_mode", ["vanilla", "future_kl"])
def test_single_step_update_takes_old_log_probs_from_its_own_forward(tiny_model_dir, tiny_tokenizer, loss_mode):
    """One optimizer step from the sampling weights: the ratio's denominator is the update forward's own
    log-probs (detached), so the separate old-log-prob forward can be skipped with the same gradient."""
    from appo.models import load_model

    prompts, responses = _rows(tiny_tokenizer, n=6)
    grads = []
    for given in (True, False):
        learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer,
                           _actor(micro_batch_size=4, loss_mode=loss_mode))
        assert learner.single_step(len(prompts))
        batch = _batch(learner, prompts, responses)
        batch.old_log_probs = learner.log_probs(prompts, responses)[0] if given else None
        metrics = learner.update(batch)
        grads.append(torch.cat([p.grad.flatten() for p in learner.params]))
        assert metrics["actor/optimizer_steps"] == 1.0
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)


def test_several_optimizer_steps_need_old_log_probs(tiny_model, tiny_tokenizer):
    prompts, responses = _rows(tiny_tokenizer, n=6)
    for actor in (_actor(ppo_epochs=2), _actor(mini_batch_size=3)):
        learner = _learner(tiny_model, tiny_tokenizer, actor)
        assert not learner.single_step(len(prompts))
        batch = _batch(learner, prompts, responses)
        batch.old_log_probs = None
        with pytest.raises(ValueError, match="old log-probs"):
            learner.update(batch)


def test_micro_batches_group_rows_of_similar_length(tiny_model, tiny_tokenizer):
    """Padding is compute: rows are split into micro-batches by length (longest first), for the update's
    forward/backward and for no-grad scoring alike. Same gradient: the accumulation test above."""
    lengths = [30, 4, 28, 5, 26, 6]  # long and short alternate, so in-order chunks would pad every short row
    prompts = [[7, i] for i in range(len(lengths))]
    responses = [[9] * n for n in lengths]
    learner = _learner(tiny_model, tiny_tokenizer, _actor(micro_batch_size=2, share_prompts=False))
    widths = []
    forward = learner._forward

    def spy(model, p, r, *args, **kw):
        widths.append(sorted(len(x) for x in r))
        return forward(model, p, r, *args, **kw)

    learner._forward = spy
    lp, _ = learner.log_probs(prompts, responses)
    assert widths == [[28, 30], [6, 26], [4, 5]]
    assert [int((row != 0).sum()) for row in lp] == lengths  # written back to each row's own place
    widths.clear()
    learner.update(_batch(learner, prompts, responses))
    assert widths[-3:] == [[28, 30], [6, 26], [4, 5]]


def _grouped_rows(tok, groups=3, per=4, seed=0):
    prompts, responses = _rows(tok, n=groups * per, seed=seed)
    return [prompts[(i // per) * per] for i in range(len(prompts))], responses


def test_shared_micro_batches_keep_a_prompts_rows_together_and_cut_off_long_ones():
    from appo.train.learner import _shared_micro_batches

    a, b, c = [1, 2, 3, 4], [1, 2, 5, 6], [1, 7]
    prompts = [a, b, a, c, a, b, a, c]
    lengths = [40, 3, 3, 2, 4, 2, 3, 3]  # prompt a: one long row and three short ones
    responses = [[9] * n for n in lengths]
    runs = _shared_micro_batches(prompts, responses, size=4)
    assert sorted(i for run in runs for i in run) == list(range(8))
    assert all(len(run) <= 4 for run in runs)
    assert [0] in runs  # the long row alone: its short siblings would pad to 40
    short_a = next(run for run in runs if 2 in run)
    assert {4, 6} <= set(short_a)  # the rest of prompt a shares one forward
    assert len(runs) == 3  # short rows of several prompts merge rather than run one forward each


@pytest.mark.parametrize("micro", [3, 8])
def test_an_update_sharing_prompts_equals_the_unshared_one(tiny_model_dir, tiny_tokenizer, micro):
    from appo.models import load_model

    prompts, responses = _grouped_rows(tiny_tokenizer)
    out, metrics = [], []
    for share in (False, True):
        learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer,
                           _actor(micro_batch_size=micro, share_prompts=share))
        lp, _ = learner.log_probs(prompts, responses)
        metrics.append(learner.update(_batch(learner, prompts, responses)))
        out.append((lp, torch.cat([p.grad.flatten() for p in learner.params])))
    # Float rounding only: the shared forward sums the same terms in another order.
    torch.testing.assert_close(out[1][0], out[0][0], atol=2e-5, rtol=0)
    assert out[0][1].abs().sum() > 0
    torch.testing.assert_close(out[1][1], out[0][1], atol=1e-6, rtol=1e-4)
    assert metrics[1]["actor/grad_norm"] == pytest.approx(metrics[0]["actor/grad_norm"], rel=1e-4)


def test_gradient_checkpointing_updates_unshared_and_scores_shared(tiny_model, tiny_tokenizer):
    """Checkpointed layers cannot keep the prompt's cache while they keep a graph."""
    prompts, responses = _grouped_rows(tiny_tokenizer, groups=2, per=3)
    learner = _learner(tiny_model, tiny_tokenizer, _actor(share_prompts=True),
                       ModelConfig(autocast="none", gradient_checkpointing=True))
    shared = []
    forward = learner._forward

    def spy(*args, **kw):
        shared.append(learner._shares())
        return forward(*args, **kw)

    learner._forward = spy
    batch = _batch(learner, prompts, responses)
    assert shared and all(shared)
    shared.clear()
    out = learner.update(batch)
    assert shared and not any(shared)
    assert out["actor/grad_norm"] > 0
