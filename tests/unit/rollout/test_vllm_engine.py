"""The vLLM engine against the HF engine on a real 10M-parameter model (fp32): same greedy tokens and
finish reasons, log-probs of the model, truncated entropies, and in-place weight pushes.

Needs the optional vllm extra (a separate venv on CPU: see docs/getting-started.md, "vLLM on a CPU"); skips without it.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="the optional vllm extra is not installed (pip install -e .[vllm])")

# Small KV cache and the in-process engine core; both must be set before the engine starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from appo.models import build_tiny, load_model, load_tokenizer  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.hf import HFEngine  # noqa: E402
from appo.rollout.teacher_forcing import teacher_forced_logprobs  # noqa: E402
from appo.rollout.trajectory import Trajectory  # noqa: E402
from appo.rollout.vllm import VLLMEngine  # noqa: E402

TEXTS = ["Calculate 12 + 7.", "Who wrote the first film?", "x", "What is the capital of the country? Think."]
# fp32 on both sides; measured worst |vLLM - recompute| is 2e-6 (different kernels, same maths).
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The 10M tiny model (head_dim 64), with one extra EOS id in its generation config, chosen as the
    first new token that greedy decoding of the first prompt emits from step 6 on: a real multi-EOS setup
    (as Llama 3 ships) that gives both engines a deterministic 'eos' case."""
    path = build_tiny(tmp_path_factory.mktemp("vllm") / "tiny10m", size="10m")
    tok = load_tokenizer(str(path))
    prompts = [_prompt(tok, t) for t in TEXTS]
    model = load_model(str(path))
    (probe,) = HFEngine(model, tok).generate([GenRequest(prompts[0], 24, temperature=0)])
    ids = probe.token_ids
    eos_at = next(i for i, t in enumerate(ids) if i >= 5 and t not in ids[:i])
    gen_cfg = json.loads((path / "generation_config.json").read_text())
    gen_cfg["eos_token_id"] = [tok.eos_token_id, ids[eos_at]]
    (path / "generation_config.json").write_text(json.dumps(gen_cfg))
    model = load_model(str(path))
    engine = VLLMEngine(str(path), tok, dtype="float32", max_model_len=256, enforce_eager=True)
    return dict(path=path, tok=tok, model=model, hf=HFEngine(model, tok), vllm=engine, prompts=prompts,
                eos_row=ids[:eos_at + 1])


def _prompt(tok, text):
    text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(text, add_special_tokens=False)


def _greedy(engine, prompts, n=24, stop=()):
    return engine.generate([GenRequest(p, n, temperature=0, stop=list(stop)) for p in prompts])


def test_greedy_matches_hf_with_length_and_eos(setup):
    hf, vl = _greedy(setup["hf"], setup["prompts"]), _greedy(setup["vllm"], setup["prompts"])
    for a, b in zip(hf, vl):
        assert b.token_ids == a.token_ids
        assert (b.finish_reason, b.stop_str) == (a.finish_reason, a.stop_str)
        assert len(b.logprobs) == len(b.entropies) == len(b.token_ids)
    assert vl[0].finish_reason == "eos" and vl[0].token_ids == setup["eos_row"]
    assert setup["vllm"].eos_ids == setup["hf"].eos_ids == {setup["tok"].eos_token_id, setup["eos_row"][-1]}
    assert {r.finish_reason for r in vl[1:]} >= {"length"}


def test_repetition_penalty_is_the_same_rule_in_both_engines(setup):
    """Greedy under a strong penalty: vLLM's repetition_penalty and the HF engine's CTRL rule pick the same
    tokens, and they differ from the unpenalised greedy path."""
    reqs = [GenRequest(p, 24, temperature=0, repetition_penalty=1.8) for p in setup["prompts"]]
    hf, vl = setup["hf"].generate(reqs), setup["vllm"].generate(reqs)
    assert [r.token_ids for r in vl] == [r.token_ids for r in hf]
    plain = _greedy(setup["hf"], setup["prompts"])
    assert [r.token_ids for r in hf] != [r.token_ids for r in plain]


def test_greedy_matches_hf_with_stop_strings(setup):
    tok, prompts = setup["tok"], setup["prompts"][1:]
    free = _greedy(setup["hf"], prompts)
    # A stop string taken from the middle of the second row's greedy text; a dummy that never occurs.
    text = tok.decode(free[1].token_ids[4:10], skip_special_tokens=False)
    stop = text[len(text) // 2:].strip() or text
    hf = _greedy(setup["hf"], prompts, stop=[stop, "never-in-output"])
    vl = _greedy(setup["vllm"], prompts, stop=[stop, "never-in-output"])
    assert hf[1].finish_reason == "stop"
    for a, b in zip(hf, vl):
        assert b.token_ids == a.token_ids
        assert (b.finish_reason, b.stop_str) == (a.finish_reason, a.stop_str)
    assert vl[1].stop_str == stop and stop in tok.decode(vl[1].token_ids, skip_special_tokens=False)
    assert len(vl[1].token_ids) < len(free[1].token_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_a_teacher_forced_recompute(setup, temperature):
    prompts = setup["prompts"]
    results = setup["vllm"].generate([GenRequest(p, 32, temperature=temperature, seed=i)
                                      for i, p in enumerate(prompts)])
    trajs = [Trajectory(prompt_ids=p, token_ids=r.token_ids) for p, r in zip(prompts, results)]
    scored = teacher_forced_logprobs(setup["model"], trajs, temperature=temperature)
    gap = max(abs(a - b) for s, r in zip(scored, results) for a, b in zip(s, r.logprobs))
    assert gap < LOGPROB_ATOL
    assert sum(len(r.token_ids) for r in results) > 3 * 6  # really sampled something


def test_same_seed_same_sample(setup):
    p = setup["prompts"][1]
    a, b, c = setup["vllm"].generate([GenRequest(p, 16, seed=5), GenRequest(p, 16, seed=5),
                                      GenRequest(p, 16, seed=6)])
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_top_logprobs_and_truncated_entropy(setup):
    engine, model, p = setup["vllm"], setup["model"], setup["prompts"][1]
    k = engine.entropy_topk
    (res,) = engine.generate([GenRequest(p, 12, seed=3, logprobs=k)])
    (short,) = engine.generate([GenRequest(p, 12, seed=3, logprobs=3)])
    assert short.token_ids == res.token_ids and all(len(e) in (3, 4) for e in short.top_logprobs)
    with torch.no_grad():
        logits = model(torch.tensor([p + res.token_ids])).logits[0, len(p) - 1:-1].float()
    logp = torch.log_softmax(logits, -1)
    for t, (tok, entry, ent) in enumerate(zip(res.token_ids, res.top_logprobs, res.entropies)):
        top = logp[t].topk(k)
        expected = dict(zip(top.indices.tolist(), top.values.tolist()))
        expected.setdefault(tok, float(logp[t, tok]))
        assert entry.keys() == expected.keys() and tok in entry
        assert all(abs(entry[i] - expected[i]) < LOGPROB_ATOL for i in entry)
        assert ent == pytest.approx(-sum(math.exp(v) * v for v in entry.values()), abs=1e-9)
        assert 0 < ent <= float(torch.special.entr(logp[t].exp()).sum()) + 1e-4


def test_load_weights_pushes_new_weights_including_tied_lm_head(setup):
    hf, vl, model, prompts = setup["hf"], setup["vllm"], setup["model"], setup["prompts"]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    before = _greedy(vl, prompts)
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
        # As a checkpoint stores a tied model: no lm_head.weight (it is the embedding).
        new = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
        vl.load_weights(lambda: new)
        expected, got = _greedy(hf, prompts), _greedy(vl, prompts)
        assert [r.token_ids for r in got] == [r.token_ids for r in expected]
        assert [r.token_ids for r in got] != [r.token_ids for r in before]
    finally:
        model.load_state_dict(original)
        vl.load_weights(lambda: original)
    assert [r.token_ids for r in _greedy(vl, prompts)] == [r.token_ids for r in before]


def test_zero_budget_and_empty_prompt_as_in_the_hf_engine(setup):
    p = setup["prompts"][2]
    res = setup["vllm"].generate([GenRequest(p, 0, logprobs=3), GenRequest(p, 3, seed=1), GenRequest(p, 0)])
    assert (res[0].token_ids, res[0].finish_reason, res[0].top_logprobs) == ([], "length", [])
    assert len(res[1].token_ids) == 3 and res[1].finish_reason == "length"
    assert res[2].token_ids == [] and res[2].top_logprobs is None
    assert setup["vllm"].generate([GenRequest(p, 0)])[0].finish_reason == "length"
    with pytest.raises(ValueError, match="empty"):
        setup["vllm"].generate([GenRequest([], 3)])


def test_make_engine_builds_vllm_from_config(setup):
    from appo.config import load_config
    from appo.rollout.engines import make_engine

    cfg = load_config(None, ["rollout.engine=vllm"])
    engine = make_engine(cfg.rollout, setup["model"], setup["tok"])
    assert isinstance(engine, VLLMEngine)
    assert engine.supports_streaming  # rollout.vllm_async defaults to the asynchronous tool loop
    (res,) = _greedy(engine, setup["prompts"][1:2])
    (ref,) = _greedy(setup["hf"], setup["prompts"][1:2])
    assert res.token_ids == ref.token_ids


def test_an_engine_built_from_a_module_serves_the_modules_weights(setup):
    """`from_config` starts vLLM from the module's checkpoint path, but the module may have trained since it
    was loaded (the pipeline's SFT, in the same process): the engine must sample from the weights the module
    holds now. Before, the pipeline's SFT evaluation and first RL step ran on the base model."""
    import copy

    from appo.config import RolloutConfig

    model = copy.deepcopy(setup["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reqs = [GenRequest(p, 12, temperature=0) for p in setup["prompts"]]
    before = [r.token_ids for r in setup["hf"].generate(reqs)]
    want = [r.token_ids for r in HFEngine(model, setup["tok"]).generate(reqs)]
    assert want != before  # the change matters
    engine = VLLMEngine.from_config(RolloutConfig(gpu_memory_utilization=0.3, vllm_async=False), model, setup["tok"])
    assert not engine.supports_streaming  # the tool loop goes round by round
    assert [r.token_ids for r in engine.generate(reqs)] == want
