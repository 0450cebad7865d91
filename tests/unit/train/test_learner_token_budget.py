"""Token-budget micro-batches (actor.use_dynamic_bsz): the update's loss and gradient equal the row-based
path's, and every forward stays within its budget (update, scoring, reference), prompt sharing or not."""

from __future__ import annotations

import pytest
import torch

from appo.config import ActorConfig, ModelConfig
from appo.rollout.teacher_forcing import forward_tokens, pad_rows, shared_prefix_rows
from appo.train.learner import Learner, _token_micro_batches

from .test_learner import _batch, _grouped_rows, _rows


def _learner(model, tok, ref=None, **actor):
    base = dict(lr=1e-3, micro_batch_size=2, grad_clip=0.0, weight_decay=0.0)
    return Learner(model, ActorConfig(**dict(base, **actor)), ModelConfig(autocast="none"), pad_id=tok.pad_token_id,
                   ref_model=ref)


def _spy(learner):
    seen = []
    forward = learner._forward

    def spy(model, p, r, *args, **kw):
        seen.append((model is learner.ref_model, torch.is_grad_enabled(), forward_tokens(p, r, learner._shares())))
        return forward(model, p, r, *args, **kw)

    learner._forward = spy
    return seen


@pytest.mark.parametrize("share", [False, True])
def test_token_budget_update_equals_the_row_based_one(tiny_model_dir, tiny_tokenizer, share):
    from appo.models import load_model

    prompts, responses = _grouped_rows(tiny_tokenizer, groups=3, per=4)
    out = []
    for dynamic in (False, True):
        learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer, share_prompts=share,
                           use_dynamic_bsz=dynamic, ppo_max_token_len_per_gpu=45, log_prob_max_token_len_per_gpu=70)
        seen = _spy(learner)
        batch = _batch(learner, prompts, responses)
        metrics = learner.update(batch)
        out.append((metrics, torch.cat([p.grad.flatten() for p in learner.params]), seen))
    (m_rows, g_rows, _), (m_tok, g_tok, seen) = out
    assert g_rows.abs().sum() > 0
    torch.testing.assert_close(g_tok, g_rows, atol=1e-6, rtol=1e-4)
    assert m_tok["actor/pg_loss"] == pytest.approx(m_rows["actor/pg_loss"], rel=1e-5, abs=1e-8)
    update = [t for _, grad, t in seen if grad]
    scoring = [t for _, grad, t in seen if not grad]
    assert update and scoring and max(update) <= 45 and max(scoring) <= 70
    assert len(update) < len(prompts) / 2  # fewer forwards than two rows each: the budget packs rows


def test_reference_scoring_has_its_own_budget(tiny_model_dir, tiny_tokenizer):
    from appo.models import load_model

    prompts, responses = _rows(tiny_tokenizer, n=8)
    learner = _learner(load_model(str(tiny_model_dir)), tiny_tokenizer, ref=load_model(str(tiny_model_dir)),
                       use_kl_loss=True, use_dynamic_bsz=True, log_prob_max_token_len_per_gpu=200,
                       ref_log_prob_max_token_len_per_gpu=30)
    seen = _spy(learner)
    lp, _ = learner.log_probs(prompts, responses)
    ref, _ = learner.log_probs(prompts, responses, reference=True)
    torch.testing.assert_close(ref, lp)  # same weights
    policy = [t for is_ref, _, t in seen if not is_ref]
    reference = [t for is_ref, _, t in seen if is_ref]
    assert len(policy) < len(reference) and max(reference) <= 30 and max(policy) <= 200


@pytest.mark.parametrize("shared", [False, True])
def test_micro_batches_cover_every_row_once_within_the_budget(shared):
    g = torch.Generator().manual_seed(0)
    prompts, responses = [], []
    for _ in range(6):
        prompt = torch.randint(5, 50, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        for _row in range(int(torch.randint(1, 5, (1,), generator=g))):
            prompts.append(prompt)
            responses.append(torch.randint(5, 50, (int(torch.randint(0, 30, (1,), generator=g)),), generator=g).tolist())
    budget = 80
    runs = _token_micro_batches(prompts, responses, budget, shared=shared, by_prompt=shared)
    assert sorted(i for run in runs for i in run) == list(range(len(prompts)))
    for run in runs:
        p, r = [prompts[i] for i in run], [responses[i] for i in run]
        tokens = forward_tokens(p, r, shared)
        assert tokens <= budget
        # the count is what the forward really computes
        if shared:
            rows = shared_prefix_rows(p, r, 0)
            assert tokens == rows.prefix_ids.numel() + rows.ids.numel()
        else:
            assert tokens == pad_rows(p, r, 0)[0].numel()
    assert len(runs) < len(prompts) // 2
