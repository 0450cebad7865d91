#!/usr/bin/env bash
# One prepared check of appo on a single CUDA GPU with no network (meant to finish in under 8 minutes on an
# H100-class GPU). It prints, stage by stage:
#   1. the CUDA-marked tests (pytest -m gpu),
#   2. the `tiny` preset for two RL steps on CUDA (its metrics),
#   3. for a randomly initialised Qwen2-0.5B-shaped model built from a config: the HF engine's generated
#      tokens/s, the learner's trained tokens/s and MFU, and vLLM's generated tokens/s where vLLM imports.
# and a summary line per stage; the exit status is 1 when a stage failed.
#
#   scripts/gpu_check.sh               # on the GPU machine; commit its output under results/
#   scripts/gpu_check.sh --cpu-smoke   # the same stages on the CPU with the tiny model (what the tests run)
#
# PYTHON selects the interpreter (default: python3 on PATH). Offline: the hub is never contacted.
set -uo pipefail

mode=cuda
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    mode=cpu
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/gpu_check.sh [--cpu-smoke]" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
work="$(mktemp -d "${TMPDIR:-/tmp}/appo-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
declare -a summary
started=$SECONDS

stage() {  # stage NAME COMMAND...: run it, keep its status for the summary
    local name="$1" t0=$SECONDS rc
    shift
    echo "== $name"
    "$@"
    rc=$?
    summary+=("$name: $([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s")
    echo
}

echo "appo gpu_check ($mode) at $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - <<'EOF'
import platform, torch
cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {platform.python_version()}, torch {torch.__version__}, {cuda}")
EOF
echo

if [[ $mode == cuda ]]; then
    stage "CUDA-marked tests" "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra --strict-markers" tests
    device=cuda
    bench=(--device cuda --size 0.5b)
else
    # No CUDA here: list the tests the GPU run executes (they skip on a CPU, saying why).
    stage "CUDA-marked tests (listed; they need CUDA)" "$PY" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests
    device=cpu
    bench=(--device cpu --size tiny --batch 4 --new-tokens 16 --learner-rows 2 --row-tokens 64)
fi

tiny_run() {
    "$PY" -m appo.cli train --config tiny --no-progress "trainer.device=$device" trainer.total_steps=2 \
        "trainer.output_dir=$work/tiny" "model.cache_dir=$work/cache" || return $?
    "$PY" - "$work/tiny/metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    print(f"step {m['step']}: reward/mean {m['reward/mean']:.3f}, actor/pg_loss {m.get('actor/pg_loss', 0):.4f}, "
          f"actor/grad_norm {m.get('actor/grad_norm', 0):.4f}, generated tokens {m.get('rollout/generated_tokens')}, "
          f"step {m.get('time/step', 0):.1f} s")
EOF
}
stage "tiny preset, two RL steps on $device" tiny_run
stage "throughput (HF engine, learner + MFU, vLLM)" "$PY" benchmarks/bench_gpu_throughput.py "${bench[@]}"

echo "== summary ($mode, $((SECONDS - started)) s)"
failed=0
for line in "${summary[@]}"; do
    echo "$line"
    [[ $line == *FAILED* ]] && failed=1
done
exit $failed
