"""`appo convert`: bring a checkpoint from another trainer over as a Hugging Face directory."""

from __future__ import annotations

import argparse
import sys

from appo.commands.common import setup_logging
from appo.train.convert import DTYPES, ConvertError, convert_verl_fsdp


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="appo convert", description="Convert a verl FSDP checkpoint into a Hugging Face directory that "
                                         "from_pretrained, `appo train model.path=...`, `appo eval` and vLLM load.",
        epilog="Example: appo convert --from verl-fsdp checkpoints/global_step_40/actor --out models/step40")
    parser.add_argument("checkpoint", metavar="DIR",
                        help="global_step_N/actor/ (model_world_size_W_rank_R.pt + huggingface/), its global_step_N/ "
                             "parent, or the run folder holding latest_checkpointed_iteration.txt.")
    parser.add_argument("--from", dest="source", required=True, choices=("verl-fsdp",), help="Checkpoint format.")
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="Output Hugging Face directory.")
    parser.add_argument("--dtype", choices=DTYPES, help="Cast the weights (default: the dtype they were saved in).")
    parser.add_argument("--force", action="store_true", help="Replace HF_DIR when it exists and is not empty.")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="Load shards holding arbitrary Python objects (runs their pickled code; default: "
                             "tensors and DTensor metadata only).")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        result = convert_verl_fsdp(args.checkpoint, args.out, args.dtype, args.force, args.trust_pickle)
    except ConvertError as e:
        print(f"appo convert: {e}", file=sys.stderr)
        return 2
    print(f"[appo] converted {result.actor_dir} ({result.world_size} rank shards, {result.tensors} tensors, "
          f"{result.dtype}) -> {result.out_dir}", flush=True)
    return 0
