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

