"""What the trainer feeds the algorithms: branch credit reaches the right parent's prefix and nowhere else,
the future value's log-ratio has the right sign and position and is exactly 0 without an update (fp32 and
bf16), and the future_kl loss's denominator leaves out the sequences its filter drops."""

from __future__ import annotations

import math

import pytest
import torch

from appo.algorithms.appo import APPO, InitRescorer
from appo.config import ActorConfig, ModelConfig, load_config
from appo.core.loss import future_kl_loss
from appo.rollout.trajectory import RolloutGroup, Trajectory
from appo.train.learner import Learner, UpdateBatch
from appo.train.trainer import flatten, loss_mask


def _traj(n, kind="init", parent=None, split=None, reward=0.0, generated=None):
    t = Trajectory(prompt_ids=[1, 2], token_ids=list(range(10, 10 + n)), kind=kind, parent=parent, split_pos=split,
                   reward=reward)
    t.generated = list(generated) if generated is not None else [1] * n
    t.logprobs, t.entropies = [0.0] * n, [0.0] * n
    return t


def test_branch_outcomes_reach_their_parents_prefix_up_to_the_split_and_nowhere_else():
    # group 0: inits a (reward 1), b (0); branch c from a at 2 (reward 1), branch d from b at 4 (reward 0)
    # group 1: inits e, f; branch g from f at 1
    g0 = RolloutGroup(None, inits=[_traj(6, reward=1.0), _traj(6, reward=0.0, generated=[1, 1, 0, 0, 1, 1])],
                      branches=[_traj(8, "branch", 0, 2, 1.0), _traj(8, "branch", 1, 4, 0.0)])
    g1 = RolloutGroup(None, inits=[_traj(5, reward=0.0), _traj(5, reward=1.0)],
                      branches=[_traj(7, "branch", 1, 1, 0.0), _traj(7, "branch", 0, 3, 1.0)])
    rows, group_ids, splits = flatten([g0, g1])
    assert group_ids == [0, 0, 0, 0, 1, 1, 1, 1]
    assert splits == [(0, 2, 2), (1, 3, 4), (5, 6, 1), (4, 7, 3)]
    mask = loss_mask(rows, mask_branches=True)
    assert mask[[2, 3, 6, 7]].sum() == 0  # APPO: branch rows carry no loss
    assert mask[1].tolist()[:6] == [1, 1, 0, 0, 1, 1]  # tool-result tokens stay out
    adv = APPO(load_config("tiny")).advantages(rows, group_ids, splits, mask)
    base_init = base_branch = 0.5 / (0.5 + 1e-6)  # two-row groups {0, 1}: z = +-0.5 / std 0.5
    # row a: own +z; up to and including its split (2) also the mean of its branch's z (+)
    assert adv[0, :3].tolist() == pytest.approx([base_init + base_branch] * 3, rel=1e-5)
    assert adv[0, 3:6].tolist() == pytest.approx([base_init] * 3, rel=1e-5)
    # row b: own -z; its branch d (split 4, -z) on positions 0..4 where b has sampled tokens only
    assert adv[1, :6].tolist() == pytest.approx([-2 * base_init, -2 * base_init, 0, 0, -2 * base_init, -base_init],
                                                rel=1e-5)
    # group 1: the branches' credit goes to their own parents only (f <- g at 1, e <- h at 3)
    assert adv[5, :2].tolist() == pytest.approx([base_init - base_branch] * 2, abs=1e-4)
    assert adv[5, 2:5].tolist() == pytest.approx([base_init] * 3, rel=1e-5)
    assert adv[4, :4].tolist() == pytest.approx([-base_init + base_branch] * 4, abs=1e-4)
    assert adv[4, 4].item() == pytest.approx(-base_init, rel=1e-5)
    assert adv[[2, 3, 6, 7]].abs().sum() == 0 and adv[:, 6:][[0, 1, 4, 5]].abs().sum() == 0


def _learner(model, tok, autocast="none", **actor):
    actor = {"lr": 1e-3, "micro_batch_size": 8, "grad_clip": 0.0, "weight_decay": 0.0, **actor}
    return Learner(model, ActorConfig(**actor),
                   ModelConfig(autocast=autocast), pad_id=tok.pad_token_id)


def _rows(tok, n=3):
    g = torch.Generator().manual_seed(0)
    vocab = len(tok)
    return [Trajectory(prompt_ids=torch.randint(5, vocab, (4 + i,), generator=g).tolist(),
                       token_ids=torch.randint(5, vocab, (6 + 2 * i,), generator=g).tolist()) for i in range(n)]


@pytest.mark.parametrize("autocast", ["none", "bfloat16"])
def test_future_value_log_ratio_is_exactly_zero_without_an_update(tiny_model, tiny_tokenizer, autocast):
    learner = _learner(tiny_model, tiny_tokenizer, autocast)
    rescorer = InitRescorer(learner, "stale_policy")
    trajs = _rows(tiny_tokenizer)
    assert rescorer(trajs, False).log_ratio is None  # no previous policy before the first update
    learner.snapshot()
    scores = rescorer(trajs, True)
    assert [len(r) for r in scores.log_ratio] == [len(t) for t in trajs]
    assert all(x == 0.0 for row in scores.log_ratio for x in row)
    assert all(e > 0 for row in scores.entropies for e in row)


def test_future_value_log_ratio_is_positive_where_the_update_raised_the_tokens_probability(tiny_model, tiny_tokenizer):
    model = tiny_model
    if model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        # tied embeddings: untie, so that the change below touches the LM head only
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    learner = _learner(model, tiny_tokenizer)
    rescorer = InitRescorer(learner, "stale_policy")
    trajs = _rows(tiny_tokenizer, 1)
    learner.snapshot()
    target, pos = trajs[0].token_ids[3], 3
    # a known change: the LM head's row for `target` moves along the hidden state that predicts position 3
    seq = torch.tensor([trajs[0].prompt_ids + trajs[0].token_ids])
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=seq).last_hidden_state[0, len(trajs[0].prompt_ids) - 1 + pos]
        model.lm_head.weight[target] += 3.0 * hidden / hidden.square().sum()
    ratio = rescorer(trajs, False).log_ratio[0]
    assert ratio[pos] > 0.5
    assert max(range(len(ratio)), key=lambda i: ratio[i]) == pos
    assert all(abs(r) < ratio[pos] / 4 for i, r in enumerate(ratio) if i != pos)


def test_rescored_log_probs_are_reused_as_old_log_probs_only_for_the_same_rows(tiny_model, tiny_tokenizer):
    learner = _learner(tiny_model, tiny_tokenizer)
    rescorer = InitRescorer(learner, "train_infer_mismatch")
    trajs = _rows(tiny_tokenizer)
    for t in trajs:
        t.logprobs = [0.0] * len(t)
    rescorer(trajs, False)
    reused = rescorer.reuse(trajs)
    fresh, _ = learner.log_probs([t.prompt_ids for t in trajs], [t.token_ids for t in trajs])
    assert torch.equal(reused, fresh)
    rescorer(trajs, False)
    assert torch.equal(rescorer.reuse(trajs[::-1]), fresh.flip(0))  # rows come in the order asked for
    assert rescorer.reuse(trajs) is None  # consumed
    rescorer(trajs[:2], False)
    assert rescorer.reuse(trajs) is None  # a row that was not rescored


def test_rows_rescored_one_prompt_at_a_time_are_reused_together(tiny_model, tiny_tokenizer):
    """APPO rescores each prompt's initial rows as soon as they are done; the update reuses all of them."""
    learner = _learner(tiny_model, tiny_tokenizer)
    rescorer = InitRescorer(learner, "train_infer_mismatch")
    trajs = _rows(tiny_tokenizer, 4)
    for t in trajs:
        t.logprobs = [0.0] * len(t)
    rescorer(trajs[2:], False)
    rescorer(trajs[:2], False)
    fresh, _ = learner.log_probs([t.prompt_ids for t in trajs], [t.token_ids for t in trajs])
    torch.testing.assert_close(rescorer.reuse(trajs), fresh, rtol=0, atol=1e-6)


def test_future_kl_denominator_leaves_out_sequences_the_filter_drops():
    """Row 0 is the spec's filter probe (ratio e^2 on tokens with A < 0: dropped); row 1 has A = +1 at ratio 1
    (per-token loss -2). The reference divides by row 1's tokens: -2.0; counting row 0 too gives -1.0."""
    new = torch.full((2, 4), -1.0)
    old = torch.tensor([[-3.0, -3.0, -1.0, -1.0], [-1.0] * 4])
    adv = torch.tensor([[-1.0] * 4, [1.0] * 4])
    mask = torch.ones(2, 4)
    local, metrics = future_kl_loss(new, old, adv, mask)
    assert float(local) == pytest.approx(-2.0) and float(metrics["kept_count"]) == 4
    # micro-batches of one row with the global kept count equal the one-batch reference value
    parts = [future_kl_loss(new[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], normalizer=4.0)[0]
             for i in range(2)]
    assert float(sum(parts)) == pytest.approx(-2.0)
    assert float(future_kl_loss(new, old, adv, mask, normalizer=8.0)[0]) == pytest.approx(-1.0)


@pytest.mark.parametrize("normaliser, expected", [("kept", "row1"), ("all", "both")])
def test_learner_normaliser_follows_the_switch_once_the_policy_moved(tiny_model, tiny_tokenizer, normaliser, expected):
    from appo.config import FutureKLConfig

    learner = _learner(tiny_model, tiny_tokenizer, loss_mode="future_kl", micro_batch_size=1,
                       future_kl=FutureKLConfig(normaliser=normaliser))
    trajs = _rows(tiny_tokenizer, 2)
    prompts, responses = [t.prompt_ids for t in trajs], [t.token_ids for t in trajs]
    current, _ = learner.log_probs(prompts, responses)
    mask = torch.zeros_like(current)
    for i, t in enumerate(trajs):
        mask[i, :len(t)] = 1.0
    old = current - 2.0 * torch.tensor([[1.0], [0.0]])  # row 0: ratio e^2 > clip_c on every token
    adv = torch.tensor([[-1.0], [1.0]]).expand_as(current) * mask
    batch = UpdateBatch(prompts, responses, mask, old, adv)
    tokens = {"row1": float(mask[1].sum()), "both": float(mask.sum())}
    assert learner._normaliser(batch, moved=True) == tokens[expected]
    assert learner._normaliser(batch, moved=False) == tokens["both"]  # at ratio 1 nothing can be dropped
    assert math.isfinite(learner.update(batch)["actor/pg_loss"])


@pytest.mark.parametrize("overrides, inert", [
    ([], True),                                   # one on-policy step per RL step: weight f is exactly 1
    (["actor.ppo_epochs=2"], False),
    (["actor.mini_batch_size=12"], False),        # 6 prompts x 4 kept initial rows = 24 rows: two steps
    (["actor.loss_mode=vanilla"], False),
])
def test_future_kl_that_cannot_act_is_named_at_start_up(overrides, inert):
    from appo.config import load_config
    from appo.train.trainer import inert_future_kl

    cfg = load_config("quickstart", ["actor.loss_mode=future_kl", *overrides])
    message = inert_future_kl(cfg)
    assert (message is not None) == inert
    if inert:
        assert "actor.ppo_epochs" in message and "actor.mini_batch_size" in message
