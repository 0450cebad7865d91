#!/usr/bin/env bash
# The algorithm study (issue 28), resumable: a finished run is skipped when this starts again, an interrupted
# one restarts from its first step. Run from the repository root; SEEDS (default 1, the pilot) and WORK (the
# SFT checkpoint, the search index, evaluation samples; default /work/study-work) can be set, and ARMS to run some
# arms' seeds first (the order changes nothing else: every run starts from the one SFT checkpoint with its own seed).
set -euo pipefail
exec python benchmarks/compare_algorithms.py --out docs/results/study/runs --work "${WORK:-/work/study-work}" \
  --arms "${ARMS:-appo,grpo,arpo,appo-fv_none,dapo,gspo}" --seeds "${SEEDS:-1}" --steps 10 --eval-every 5 --eval-subset 100 \
  --greedy-between --sampled-k 4 --sampled-questions 100 --rows grpo=5,arpo=6:3,appo=6:3,dapo=5,gspo=5 \
  sft.num_examples=224 actor.ppo_mini_batch_size=2 actor.lr=3e-6
