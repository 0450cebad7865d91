"""One GRPO step of the same shape through appo and TRL's GRPOTrainer, back to back in one process.

Shape: SmolLM2-135M-Instruct, P prompts x N rows (default 8 x 8), up to 128 new tokens, float32 (no
autocast), no tools, no KL term (TRL's default beta=0; `--kl` turns on appo's low-var KL and TRL's
beta=0.001 alike), one optimizer step per RL step, micro-batches of actor.micro_batch_size rows on both
sides (TRL: per_device_train_batch_size=8 x gradient_accumulation_steps=P*N/8). Each side gets one warm-up
step, then the steps alternate appo / TRL (`--pairs` of them): TRL's training loop calls appo's step from
its on_step_end callback, so both run under the same threads, load and memory.

Columns: `step` is the wall time of one RL step (appo: `Trainer.rl_step`; TRL: one optimizer step of
`trainer.train()`, from the end of the previous step to on_step_end). `gen tok/s` is generated tokens
over the sampling time (appo: time/generate; TRL: its `_generate_single_turn`). `learner` is appo's
time/learner (old log-prob forward + update) and, for TRL, the step minus `_generate_and_score_completions`
(TRL skips the old log-prob forward when it generates once per optimizer step). Speed-ups: step and
learner = TRL time / appo time, generate = appo tok/s / TRL tok/s, each over the sum of the timed pairs.
Rows stop at EOS, so the two sides generate different numbers of tokens; the token columns show how many.

The extra lives in its own venv (never a test dependency):

    python3 -m venv .venv-trl
    .venv-trl/bin/pip install -r requirements/cpu.txt
    .venv-trl/bin/pip install -c requirements/cpu.txt trl==1.16.0
    .venv-trl/bin/pip install --no-deps -e .
    .venv-trl/bin/python benchmarks/bench_vs_trl.py [--pairs 3] [--prompts 8] [--rows 8] [--new-tokens 128]

The last line is `vs_trl: step speed X.XX× (generate Y.YY×, learner Z.ZZ×)`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from appo.config import load_config  # noqa: E402
from appo.data.datasets import build_prompts  # noqa: E402
from appo.data.tasks import build_task  # noqa: E402
from appo.models import load_model, load_tokenizer  # noqa: E402
from appo.train.trainer import Trainer  # noqa: E402

MODEL = "smollm2-135m-instruct"


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return " ".join(found) or "none of avx2/avx512"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def appo_side(args, rows: list[dict], out_dir: str):
    overrides = [f"model.path={MODEL}", "model.autocast=none", "algorithm.name=grpo", f"rollout.n={args.rows}",
                 f"data.batch_size={args.prompts}", f"rollout.max_response_length={args.new_tokens}",
                 "tools.enabled=[]", f"actor.use_kl_loss={str(args.kl).lower()}", "trainer.dump_rollouts=false",
                 f"trainer.output_dir={out_dir}", f"trainer.total_steps={args.pairs + 1}"]
    cfg = load_config("grpo", overrides)
    tokenizer = load_tokenizer(MODEL)
    prompts, _ = build_prompts(rows, tokenizer, cfg.data, source="arithmetic")
    trainer = Trainer(cfg, load_model(MODEL, cfg.model.dtype), tokenizer, prompts, progress=False)

    def step(k: int) -> dict:
        start = time.perf_counter()
        m = trainer.rl_step(k)
        wall = time.perf_counter() - start
        return {"step": wall, "generate": m["time/generate"], "learner": m["time/learner"],
                "tokens": m["rollout/response_length_mean"] * m["rollout/update_rows"]}

    return step, cfg.actor.micro_batch_size


class TimedGRPO(GRPOTrainer):
    """GRPOTrainer that adds up the seconds spent generating and in generate-and-score, and the tokens made."""

    def reset_clock(self) -> None:
        self.clock = {"generate": 0.0, "generate_and_score": 0.0, "tokens": 0}

    def _generate_single_turn(self, prompt_ids, *args, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
        self.clock["generate"] += time.perf_counter() - start
        self.clock["tokens"] += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    def _generate_and_score_completions(self, inputs):
        start = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        self.clock["generate_and_score"] += time.perf_counter() - start
        return out


class Alternate(TrainerCallback):
    """After TRL's step k: record it (k >= 2; step 1 is its warm-up), then run appo's step k (k <= pairs)."""

    def __init__(self, appo_step, pairs: int):
        self.appo_step, self.pairs = appo_step, pairs
        self.trainer: TimedGRPO | None = None
        self.appo, self.trl = [], []
        self.resumed = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now, k, c = time.perf_counter(), state.global_step, self.trainer.clock
        if k >= 2:
            step = now - self.resumed
            self.trl.append({"step": step, "generate": c["generate"], "tokens": c["tokens"],
                             "learner": step - c["generate_and_score"]})
            show("trl", k - 1, self.trl[-1])
        if k <= self.pairs:
            self.appo.append(self.appo_step(k))
            show("appo", k, self.appo[-1])
        self.trainer.reset_clock()
        self.resumed = time.perf_counter()


def show(side: str, pair: int, r: dict) -> None:
    print(f"  pair {pair} {side:4s}: step {r['step']:7.2f}s  generate {r['generate']:7.2f}s "
          f"({r['tokens']:5.0f} tok, {r['tokens'] / r['generate']:6.1f} tok/s)  learner {r['learner']:7.2f}s  "
          f"[load {load()}]", flush=True)


def trivial_reward(completions, **kwargs) -> list[float]:
    """Shorter is better: cheap, and not constant, so the advantages are not all zero."""
    return [-len(str(c)) / 1000 for c in completions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="timed appo/TRL step pairs after one warm-up each")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8, help="rows per prompt (rollout.n / num_generations)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--kl", action="store_true", help="KL to the reference on both sides (appo low_var_kl, TRL beta)")
    args = ap.parse_args()

    print(f"cpu: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {load()}")
    rows = build_task("arithmetic", num_train=args.prompts, num_val=0, seed=1, system_prompt=None).train
    tmp = tempfile.mkdtemp(prefix="bench-vs-trl-")
    appo_step, micro = appo_side(args, rows, tmp + "/appo")
    print("warm-up appo", flush=True)
    appo_step(0)

    total = args.prompts * args.rows
    micro = min(micro, total)
    if total % micro:
        raise SystemExit(f"prompts x rows = {total} must be a multiple of actor.micro_batch_size={micro}")
    config = GRPOConfig(
        output_dir=tmp + "/trl", use_cpu=True, bf16=False, fp16=False, seed=0, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        max_steps=args.pairs + 1, learning_rate=1e-6, num_generations=args.rows,
        per_device_train_batch_size=micro, gradient_accumulation_steps=total // micro,
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.001 if args.kl else 0.0, use_vllm=False, log_completions=False)
    dataset = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    callback = Alternate(appo_step, args.pairs)
    trainer = TimedGRPO(model=load_model(MODEL, "float32"), reward_funcs=[trivial_reward], args=config,
                        train_dataset=dataset, processing_class=load_tokenizer(MODEL), callbacks=[callback])
    trainer.reset_clock()
    callback.trainer = trainer
    print("warm-up trl, then the timed pairs", flush=True)
    callback.resumed = time.perf_counter()
    trainer.train()

    def total_of(side: list[dict], key: str) -> float:
        return sum(r[key] for r in side)

    a, t = callback.appo, callback.trl
    print(f"{'':6s}{'step s':>9s}{'gen s':>9s}{'tokens':>9s}{'gen tok/s':>11s}{'learner s':>11s}   "
          f"(sums over {len(a)} timed steps; load {load()})")
    for name, side in (("appo", a), ("trl", t)):
        print(f"{name:6s}{total_of(side, 'step'):9.2f}{total_of(side, 'generate'):9.2f}"
              f"{total_of(side, 'tokens'):9.0f}{total_of(side, 'tokens') / total_of(side, 'generate'):11.1f}"
              f"{total_of(side, 'learner'):11.2f}")
    step = total_of(t, "step") / total_of(a, "step")
    gen = (total_of(a, "tokens") / total_of(a, "generate")) / (total_of(t, "tokens") / total_of(t, "generate"))
    learner = total_of(t, "learner") / total_of(a, "learner")
    print(f"vs_trl: step speed {step:.2f}× (generate {gen:.2f}×, learner {learner:.2f}×)")


if __name__ == "__main__":
    main()
