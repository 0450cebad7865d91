"""How much signal APPO's future value carries: the trainer's log-ratio against the clean drift of one update.

For each learning rate (1e-6, 1e-4) and learner precision (fp32, bf16 autocast), on the tiny model:
1. one PPO update on sampled rows (random +-1 advantages), keeping the weights before it (theta_k-1);
2. fresh rows sampled by the updated policy theta_k (the HF engine, as in training);
3. three per-token log-ratios on those rows:
   - clean: float64-accumulated fp32 recomputes, theta_k minus theta_k-1 (what the update really moved);
   - old:   the sampler's own log-probs minus a learner recompute under theta_k-1 in the learner's precision
            (appo before this change: two different computations on the two sides);
   - new:   what the trainer now uses (`appo.train.trainer.InitRescorer`): the learner on both sides.
Prints the Pearson correlation of old and new with clean, and the mean |log-ratio| with no update at all.
The last line is `fv: min correlation X.XXX` (the new way, over the four settings).

    python benchmarks/bench_future_value.py [--rows 32] [--tokens 48]
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from appo.config import ActorConfig, ModelConfig  # noqa: E402
from appo.models import load_model, load_tokenizer  # noqa: E402
from appo.rollout.engine import GenRequest  # noqa: E402
from appo.rollout.hf import HFEngine  # noqa: E402
from appo.rollout.trajectory import Trajectory  # noqa: E402
from appo.train.learner import Learner, UpdateBatch  # noqa: E402
from appo.train.trainer import InitRescorer  # noqa: E402


def _sample(model, tokenizer, rows: int, tokens: int, seed: int) -> list[Trajectory]:
    engine = HFEngine(model, tokenizer)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Question {seed}.{i}: add {i} and 7."}],
                                           add_generation_prompt=True, tokenize=False) for i in range(rows)]
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    results = engine.generate([GenRequest(p, tokens, seed=seed * 1000 + i) for i, p in enumerate(prompts)])
    return [Trajectory(prompt_ids=p, token_ids=r.token_ids, generated=[1] * len(r.token_ids), logprobs=r.logprobs,
                       entropies=r.entropies) for p, r in zip(prompts, results)]


def _flat(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([x for row in rows for x in row], dtype=torch.float64)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-300))


def run(base, tokenizer, lr: float, autocast: str, rows: int, tokens: int) -> dict:
    model = copy.deepcopy(base)
    learner = Learner(model, ActorConfig(lr=lr, micro_batch_size=8, grad_clip=0.0, weight_decay=0.0),
                      ModelConfig(autocast=autocast), pad_id=tokenizer.pad_token_id)
    rescorer = InitRescorer(learner, "stale_policy")
    train = _sample(model, tokenizer, rows, tokens, seed=1)
    prompts, responses = [t.prompt_ids for t in train], [t.token_ids for t in train]
    old, _ = learner.log_probs(prompts, responses)
    mask = torch.zeros_like(old)
    for i, t in enumerate(train):
        mask[i, :len(t)] = 1.0
    g = torch.Generator().manual_seed(0)
    adv = (torch.randint(0, 2, (rows, 1), generator=g).float() * 2 - 1).expand_as(old) * mask
    # no update yet: the log-ratio each way should be 0
    learner.snapshot()
    idle_rows = _sample(model, tokenizer, rows, tokens, seed=3)
    idle_new = _flat(rescorer(idle_rows, False).log_ratio)
    idle_old = _flat([[s - p for s, p in zip(t.logprobs, prev)] for t, prev in
                      zip(idle_rows, _rows_of(learner.previous_log_probs(*_ids(idle_rows)), idle_rows))])
    learner.update(UpdateBatch(prompts, responses, mask, old, adv.clone()))

    rows_k = _sample(model, tokenizer, rows, tokens, seed=2)
    ids = _ids(rows_k)
    behind = _rows_of(learner.previous_log_probs(*ids), rows_k)
    old_way = _flat([[s - p for s, p in zip(t.logprobs, prev)] for t, prev in zip(rows_k, behind)])
    new_way = _flat(rescorer(rows_k, False).log_ratio)
    clean_now = learner.log_probs(*ids, autocast_dtype="none")[0].double()
    clean_prev = learner.previous_log_probs(*ids, autocast_dtype="none").double()
    clean = _flat(_rows_of(clean_now - clean_prev, rows_k))
    return {"lr": lr, "autocast": autocast, "drift": float(clean.abs().mean()), "old": _corr(old_way, clean),
            "new": _corr(new_way, clean), "idle_old": float(idle_old.abs().mean()),
            "idle_new": float(idle_new.abs().mean())}


def _ids(trajs):
    return [t.prompt_ids for t in trajs], [t.token_ids for t in trajs]


def _rows_of(values: torch.Tensor, trajs) -> list[list[float]]:
    return [values[i, :len(t)].tolist() for i, t in enumerate(trajs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer("tiny")
    base = load_model("tiny")
    results = [run(base, tokenizer, lr, ac, args.rows, args.tokens)
               for lr in (1e-6, 1e-4) for ac in ("none", "bfloat16")]
    print(f"tiny model, {args.rows} rows x {args.tokens} tokens; correlation with the clean drift "
          "(theta_k vs theta_k-1, fp32 recomputes)")
    print(f"{'lr':>7} {'learner':>9} {'mean |drift|':>13} {'old corr':>9} {'new corr':>9} "
          f"{'no-update |old|':>16} {'no-update |new|':>16}")
    for r in results:
        print(f"{r['lr']:>7.0e} {'fp32' if r['autocast'] == 'none' else 'bf16':>9} {r['drift']:>13.2e} "
              f"{r['old']:>9.3f} {r['new']:>9.3f} {r['idle_old']:>16.2e} {r['idle_new']:>16.2e}")
    print(f"fv: min correlation {min(r['new'] for r in results):.3f}")


if __name__ == "__main__":
    main()
