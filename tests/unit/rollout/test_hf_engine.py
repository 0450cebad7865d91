"""The HF engine: log-probs and entropies of the sampled distribution, seeds, stops, EOS, lengths."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from appo.rollout.engine import GenRequest
from appo.rollout.hf import HFEngine, truncate_logits

from .conftest import chat_prompt as _prompt


def _recompute(model, prompt_ids, result, temperature=1.0):
    ids = torch.tensor([prompt_ids + result.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, torch.tensor(result.token_ids)[:, None]).squeeze(-1)
    return chosen, torch.special.entr(logp.exp()).sum(-1), logp


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_match_a_teacher_forced_recompute(engine, tiny_model, tiny_tokenizer, temperature):
    prompts = [_prompt(tiny_tokenizer), _prompt(tiny_tokenizer, "Who wrote the first film?")]
    results = engine.generate([GenRequest(p, 16, temperature=temperature, seed=i) for i, p in enumerate(prompts)])
    for p, res in zip(prompts, results):
        chosen, entropy, _ = _recompute(tiny_model, p, res, temperature)
        assert len(res.token_ids) == len(res.logprobs) == len(res.entropies)
        assert torch.allclose(torch.tensor(res.logprobs), chosen, atol=1e-4)
        assert torch.allclose(torch.tensor(res.entropies), entropy, atol=1e-4)
        assert res.stop_str is None
        assert (res.finish_reason, len(res.token_ids)) == ("length", 16) or res.finish_reason == "eos"


def test_top_logprobs_are_of_the_sampled_distribution(engine, tiny_model, tiny_tokenizer):
    p = _prompt(tiny_tokenizer)
    (res,) = engine.generate([GenRequest(p, 6, logprobs=5, seed=1)])
    _, _, logp = _recompute(tiny_model, p, res)
    for t, (entry, tok) in enumerate(zip(res.top_logprobs, res.token_ids)):
        top = logp[t].topk(5)
        expected = dict(zip(top.indices.tolist(), top.values.tolist()))
        expected.setdefault(tok, float(logp[t, tok]))
        assert entry.keys() == expected.keys()
        assert all(abs(entry[k] - expected[k]) < 1e-4 for k in entry)


def test_same_seed_same_sample_whatever_the_batch(engine, tiny_tokenizer):
    a, b = _prompt(tiny_tokenizer), _prompt(tiny_tokenizer, "What is the capital of the country?")
    alone = engine.generate([GenRequest(a, 12, seed=7)])[0]
    batched = engine.generate([GenRequest(b, 3, seed=1), GenRequest(a, 12, seed=7), GenRequest(b, 12, seed=2)])
    assert batched[1].token_ids == alone.token_ids
    other = engine.generate([GenRequest(a, 12, seed=8)])[0]
    assert other.token_ids != alone.token_ids


def test_greedy_reports_the_t1_distribution(engine, tiny_model, tiny_tokenizer):
    p = _prompt(tiny_tokenizer)
    (res,) = engine.generate([GenRequest(p, 8, temperature=0.0, seed=5)])
    chosen, entropy, logp = _recompute(tiny_model, p, res)
    assert res.token_ids == logp.argmax(-1).tolist()
    assert torch.allclose(torch.tensor(res.logprobs), chosen, atol=1e-4)
    assert torch.allclose(torch.tensor(res.entropies), entropy, atol=1e-4)


def test_truncation_keeps_top_k_then_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05], [0.4, 0.3, 0.2, 0.1]]))
    out = truncate_logits(logits, torch.tensor([2, -1, -1]), torch.tensor([1.0, 0.7, 1.0]))
    kept = torch.isfinite(out)
    assert kept.tolist() == [[True, True, False, False], [True, True, False, False], [True] * 4]
    assert torch.allclose(torch.softmax(out[0], -1)[:2], torch.tensor([0.625, 0.375]))


def test_top_k_sampling_never_leaves_the_top_k(engine, tiny_model, tiny_tokenizer):
    p = _prompt(tiny_tokenizer)
    (res,) = engine.generate([GenRequest(p, 10, top_k=3, seed=11)])
    _, _, logp = _recompute(tiny_model, p, res)
    for t, tok in enumerate(res.token_ids):
        assert tok in logp[t].topk(3).indices.tolist()
    # the reported entropy is that of the renormalised top-3 distribution: at most ln 3
    assert max(res.entropies) <= math.log(3) + 1e-5


def test_stop_string_split_across_tokens_ends_the_row_right_after_it(scripted_lm, tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok.tokenize("x)</python>")) > 2  # the closing tag really is several tokens
    seq = tok.encode("<python>print(6*7)</python> <result>\n42\n</result>", add_special_tokens=False)
    model = scripted_lm(seq)
    engine = HFEngine(model, tok)
    prompt = seq[:3]
    (res,) = engine.generate([GenRequest(prompt, 40, temperature=0, stop=["</python>", "</search>"])])
    text = tok.decode(res.token_ids)
    assert res.finish_reason == "stop" and res.stop_str == "</python>"
    assert text.endswith("</python>") and tok.decode(prompt) + text == "<python>print(6*7)</python>"


def test_rows_finish_at_different_times_and_leave_the_batch(scripted_lm, tiny_tokenizer):
    tok = tiny_tokenizer
    seq = tok.encode("a b c d e f g h i j k l m n o p q r s t u v w x y z", add_special_tokens=False)
    seq += [tok.eos_token_id]
    model = scripted_lm(seq)
    engine = HFEngine(model, tok)
    prompts = [seq[:20], seq[:4], seq[:12]]  # the longest prompt reaches EOS first
    results = engine.generate([GenRequest(p, 100, temperature=0) for p in prompts])
    for p, res in zip(prompts, results):
        assert p + res.token_ids == seq
        assert res.finish_reason == "eos" and res.token_ids[-1] == tok.eos_token_id
    assert len(model.batch_sizes) > 3 and model.batch_sizes[-1] == 1  # finished rows stopped being computed


def test_length_limit_and_zero_budget(engine, tiny_tokenizer):
    p = _prompt(tiny_tokenizer)
    res = engine.generate([GenRequest(p, 0, seed=1), GenRequest(p, 3, seed=1)])
    assert res[0].token_ids == [] and res[0].finish_reason == "length"
    assert len(res[1].token_ids) == 3 and res[1].finish_reason == "length"
    with pytest.raises(ValueError, match="empty"):
        engine.generate([GenRequest([], 3)])


def test_generate_keeps_the_shared_module_training_state_and_weights(tiny_model, tiny_tokenizer):
    tiny_model.train()
    engine = HFEngine(tiny_model, tiny_tokenizer)
    engine.generate([GenRequest(_prompt(tiny_tokenizer), 2, seed=0)])
    assert tiny_model.training
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    def fail():
        raise AssertionError("a shared module must not ask for weights")

    engine.load_weights(fail)  # shared module: nothing to pull
    replica = copy.deepcopy(tiny_model)
    own = HFEngine(replica, tiny_tokenizer, own_copy=True)
    new = {k: v + 1 for k, v in before.items()}
    own.load_weights(lambda: new)
    assert all(torch.equal(replica.state_dict()[k], new[k]) for k in new)
    assert all(torch.equal(tiny_model.state_dict()[k], before[k]) for k in before)
    with pytest.raises(KeyError, match="unknown parameter"):
        own.load_weights(lambda: {"nope": torch.zeros(1)})


# ------------------------------------------------------------------------------- repetition penalty


def _row(prompt_ids, tokens, penalty):
    from appo.rollout.hf import _Row

    row = _Row(GenRequest(prompt_ids, 8, repetition_penalty=penalty), 0)
    row.tokens = list(tokens)
    return row


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    from appo.rollout.hf import apply_repetition_penalty

    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0, 0.0],
                           [2.0, -1.0, 0.5, -3.0, 4.0, 0.0]])
    # row 0 has seen tokens 0, 1 (prompt) and 4 (generated, twice): each is penalised once
    rows = [_row([0, 1], [4, 4], 1.1), _row([0, 1], [4], 1.0)]
    out = apply_repetition_penalty(logits, rows)
    assert out[0].tolist() == pytest.approx([2.0 / 1.1, -1.0 * 1.1, 0.5, -3.0, 4.0 / 1.1, 0.0])
    assert torch.equal(out[1], logits[1])      # p = 1: untouched
    assert torch.equal(logits[0], torch.tensor([2.0, -1.0, 0.5, -3.0, 4.0, 0.0]))  # pure: input kept


def test_sampled_distribution_is_the_penalised_one(engine, tiny_model, tiny_tokenizer):
    """The engine's log-prob of each sampled token equals a recompute under the CTRL rule applied to
    prompt + tokens so far, then temperature: the penalty enters the distribution exactly as defined."""
    prompt = _prompt(tiny_tokenizer)
    (res,) = engine.generate([GenRequest(prompt, 12, temperature=0.8, repetition_penalty=1.3, seed=5)])
    (plain,) = engine.generate([GenRequest(prompt, 12, temperature=0.8, seed=5)])
    ids = torch.tensor([prompt + res.token_ids])
    with torch.no_grad():
        raw = tiny_model(ids).logits[0, len(prompt) - 1:-1].float()
    for t, tok in enumerate(res.token_ids):
        seen = torch.zeros(raw.shape[-1], dtype=torch.bool)
        seen[torch.tensor(prompt + res.token_ids[:t])] = True
        step = torch.where(seen, torch.where(raw[t] > 0, raw[t] / 1.3, raw[t] * 1.3), raw[t])
        expected = torch.log_softmax(step / 0.8, -1)[tok]
        assert res.logprobs[t] == pytest.approx(float(expected), abs=1e-4)
    assert res.logprobs != pytest.approx(plain.logprobs, abs=1e-4)


def test_decode_steps_write_the_cache_in_place(engine, tiny_tokenizer):
    """While no row leaves or joins, a decode step adds its column to the cache's spare capacity: the
    keys stay in one buffer (a concatenation would copy the whole cache every step)."""
    session = engine.open_session()
    for seed, text in enumerate(["hello there", "a longer prompt than the other one"]):
        session.add(seed, GenRequest(_prompt(tiny_tokenizer, text), max_new_tokens=12, temperature=1.0,
                                     seed=seed, stop=[]))
    session.step()  # both join and take their first decode step
    layer = session.cache.layers[0]
    start, width = layer.keys.data_ptr(), layer.keys.shape[2]
    for i in range(1, 6):
        assert not session.step(), "no row should finish within 12 tokens' budget this early"
        assert layer.keys.shape[2] == width + i and layer.keys.data_ptr() == start
    assert session.kv_bytes >= layer.keys.element_size() * layer.keys.numel() * 2 * len(session.cache.layers)


def test_rows_leave_and_join_without_copying_the_batch(engine, tiny_tokenizer):
    """A row that leaves, and one that joins, touch only their own rows of the batch's cache: the others
    stay where they are in one buffer (re-packing the whole cache on every join or leave was a third of the
    time of a tool-heavy evaluation). The samples are those of rows decoded on their own."""
    texts = ["hello there", "a longer prompt than the other one", "short", "a prompt that joins later on"]
    budgets = [3, 14, 14, 6]
    session = engine.open_session()
    for seed in range(3):
        session.add(seed, GenRequest(_prompt(tiny_tokenizer, texts[seed]), max_new_tokens=budgets[seed],
                                     temperature=1.0, seed=seed, stop=[]))
    results = {}
    session.step()
    layer = session.cache.layers[0]
    start = layer.keys.data_ptr()
    for i in range(1, 10):
        if i == 4:  # row 0 left at step 3: a new one joins
            session.add(3, GenRequest(_prompt(tiny_tokenizer, texts[3]), max_new_tokens=budgets[3],
                                      temperature=1.0, seed=3, stop=[]))
        results.update({key: res for key, res, _ in session.step()})
        assert session.cache.layers[0] is layer and layer.keys.data_ptr() == start, f"step {i}"
    assert sorted(results) == [0, 3]
    while len(session):
        results.update({key: res for key, res, _ in session.step()})
    alone = engine.generate([GenRequest(_prompt(tiny_tokenizer, t), max_new_tokens=b, temperature=1.0, seed=s,
                                        stop=[]) for s, (t, b) in enumerate(zip(texts, budgets))])
    for seed, res in enumerate(alone):
        assert results[seed].token_ids == res.token_ids
        assert results[seed].logprobs == pytest.approx(res.logprobs, abs=1e-4)
