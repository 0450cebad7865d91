"""Teacher-forced log-probs: the one scoring path agrees with what the sampler drew, for mixed lengths."""

from __future__ import annotations

import pytest

from appo.rollout.appo import init_scorer
from appo.rollout.engine import GenRequest
from appo.rollout.teacher_forcing import teacher_forced_logprobs, teacher_forced_scores
from appo.rollout.trajectory import Trajectory

from .conftest import chat_prompt as _prompt


def test_scorer_agrees_with_sampler_for_mixed_lengths(engine, tiny_model, tiny_tokenizer):
    prompts = [_prompt(tiny_tokenizer), _prompt(tiny_tokenizer, "x")]
    results = engine.generate([GenRequest(p, n, seed=3) for p, n in zip(prompts, (5, 11))])
    trajs = [Trajectory(prompt_ids=p, token_ids=r.token_ids) for p, r in zip(prompts, results)]
    trajs.append(Trajectory(prompt_ids=prompts[0]))  # empty response
    scored = teacher_forced_logprobs(tiny_model, trajs, batch_size=3)
    assert [len(s) for s in scored] == [5, 11, 0]
    for s, r in zip(scored, results):
        assert max(abs(a - b) for a, b in zip(s, r.logprobs)) < 1e-4
    trajs[0].logprobs = list(results[0].logprobs)
    score = init_scorer("train_infer_mismatch",
                        lambda t, ent: teacher_forced_scores(tiny_model, t, with_entropy=ent), lambda t: None)
    scores = score(trajs[:1], True)
    mismatch = scores.log_ratio[0]
    assert scores.entropies[0] == pytest.approx(results[0].entropies, abs=1e-4)  # exact, as the sampler's
    assert mismatch == pytest.approx([s - b for s, b in zip(scored[0], results[0].logprobs)], abs=1e-6)
    assert max(abs(x) for x in mismatch) < 1e-4  # same weights on both sides: numerical noise only



def _shared_prompt_rows(tokenizer):
    """Groups of several rows, responses sharing their first tokens, empty responses (one in a group
    whose other rows share more than the prompt, one in a group of its own with a 1-token prompt)."""
    a, b = _prompt(tokenizer), _prompt(tokenizer, "another question")
    prompts = [a, a, a, b, b, a, _prompt(tokenizer, "alone"), [9], [9]]
    responses = [[5, 6, 7, 8], [5, 6, 9], [5, 13, 14, 15, 16], [7], [8, 9, 10], [], [3, 4, 5], [], []]
    return prompts, responses


@pytest.mark.parametrize("with_entropy", [False, True])
def test_rows_sharing_a_prompt_score_as_they_do_unshared(tiny_model, tiny_tokenizer, with_entropy):
    import torch

    from appo.rollout.teacher_forcing import ResponseLogits, response_log_probs, shared_prefix_rows

    prompts, responses = _shared_prompt_rows(tiny_tokenizer)
    head = ResponseLogits(tiny_model.eval())
    kw = dict(pad_id=0, device=torch.device("cpu"), with_entropy=with_entropy)
    with torch.no_grad():
        lp, ent, mask = response_log_probs(head, prompts, responses, **kw)
        lp_s, ent_s, mask_s = response_log_probs(head, prompts, responses, share_prompts=True, **kw)
    assert torch.equal(mask, mask_s)
    assert mask.sum() == sum(map(len, responses))
    # prompt a's rows share its ids and their first response token; its empty row does not shorten that
    assert int(shared_prefix_rows(prompts, responses, 0).prefix_attn[0].sum()) == len(prompts[0]) + 1
    assert not lp_s.isnan().any()
    assert torch.allclose(lp, lp_s, atol=1e-5), (lp - lp_s).abs().max()
    assert bool((lp.abs() > 0.1).any())  # real log-probs, not zeros on both sides
    if with_entropy:
        assert torch.allclose(ent, ent_s, atol=1e-5)


def test_rows_sharing_a_prompt_get_the_unshared_gradient(tiny_model, tiny_tokenizer):
    import copy

    import torch

    from appo.rollout.teacher_forcing import ResponseLogits, response_log_probs

    prompts, responses = _shared_prompt_rows(tiny_tokenizer)
    weights = torch.linspace(-1.0, 2.0, 6)
    grads = []
    for share in (False, True):
        model = copy.deepcopy(tiny_model).train()
        lp, _, mask = response_log_probs(ResponseLogits(model), prompts, responses, pad_id=0,
                                         device=torch.device("cpu"), share_prompts=share)
        (lp * weights[: lp.shape[1]]).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        scale = g.abs().max()
        assert float((g - grads[1][name]).abs().max()) <= 1e-4 * scale, name


def test_the_shared_forward_refuses_gradient_checkpointing(tiny_model, tiny_tokenizer):
    """Checkpointed layers drop the prefix's cache: the second pass would run without its prompt."""
    import torch

    from appo.rollout.teacher_forcing import ResponseLogits, response_log_probs

    prompts, responses = _shared_prompt_rows(tiny_tokenizer)
    tiny_model.gradient_checkpointing_enable()
    tiny_model.train()
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        response_log_probs(ResponseLogits(tiny_model), prompts, responses, pad_id=0, device=torch.device("cpu"),
                           share_prompts=True)
