"""The shared-prefix forward under FSDP2 with two gloo processes: every rank runs the same collectives,
even when all of one rank's rows equal their group's shared prefix (nothing left for the second pass)."""

from __future__ import annotations

import pytest

from ..two_ranks import run_two_ranks

pytestmark = pytest.mark.dist


def _score(rank: int, rows_by_rank) -> float:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from appo.rollout.teacher_forcing import ResponseLogits, response_log_probs
    from appo.train import distributed

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg)
    head = ResponseLogits(model)
    distributed.shard(head, model.get_decoder().layers)
    prompts, responses = rows_by_rank[rank]
    lp, _, mask = response_log_probs(head, prompts, responses, pad_id=0, device=torch.device("cpu"),
                                     share_prompts=True)
    (lp * mask).sum().backward()
    return float(lp.sum())


def test_rank_whose_rows_are_all_prefix_runs_the_same_collectives():
    # rank 0: two identical rows (a prompt whose rollouts came out the same): all of it is shared prefix;
    # rank 1: rows that differ after the prompt, so its second pass has tokens.
    same = ([[1, 2, 3], [1, 2, 3]], [[4, 5, 6], [4, 5, 6]])
    differ = ([[1, 2, 3], [1, 2, 3]], [[4, 5, 6], [7, 8]])
    scores = run_two_ranks(_score, [same, differ])
    assert all(s < 0 for s in scores.values())
