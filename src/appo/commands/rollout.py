"""`appo rollout`: sample rollout groups with the configured algorithm, without training, and write them
as JSONL (tokens, texts, masks, log-probs, entropies, branch structure, rewards) and as an HTML tree view.

    appo rollout --config tiny --num-prompts 4 --out runs/rollouts algorithm.name=appo rollout.n=8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from appo.commands.common import setup_logging, with_task_index
from appo.config import ConfigError, load_config, preset_names
from appo.data.prompt_sets import load_prompt_sets, prepare_task
from appo.models import load_model, load_tokenizer, resolve_device
from appo.rewards import get_reward_fn
from appo.rollout.appo import init_scorer
from appo.rollout.engines import make_engine
from appo.rollout.html import render_html
from appo.rollout.sampling import sample_groups
from appo.rollout.teacher_forcing import teacher_forced_scores
from appo.tools import build_tools

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="appo rollout", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="quickstart", help=f"Preset or YAML file; presets: {', '.join(preset_names())}.")
    p.add_argument("--num-prompts", type=int, default=4, help="How many prompts to roll out (default 4).")
    p.add_argument("--split", choices=("train", "val"), default="train", help="Which prompt set to take them from.")
    p.add_argument("--step", type=int, default=0, help="Step number for the seeds (a training step's rollouts).")
    p.add_argument("--out", default="runs/rollouts", help="Output folder (default runs/rollouts).")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    p.add_argument("overrides", nargs="*", help="Dotted config overrides, e.g. rollout.n=8 tools.call_limit=2.")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)  # overrides before and after flags alike
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"appo rollout: {e}", file=sys.stderr)
        return 2
    if args.num_prompts < 1:
        print("appo rollout: --num-prompts must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups, metrics, tokenizer = sample(cfg, args.num_prompts, args.split, args.step, out,
                                        progress=not args.no_progress)
    write_outputs(groups, metrics, tokenizer, out, title=f"appo rollout · {cfg.rollout.strategy} · {args.config}")
    rows = sum(len(g.rows) for g in groups)
    print(f"wrote {rows} rows for {len(groups)} prompts to {out / 'rollouts.jsonl'} and {out / 'rollouts.html'}")
    return 0


def sample(cfg, num_prompts: int, split: str, step: int, out: Path, progress: bool = True):
    """Load the policy, prompts, tools and rewards named by `cfg`, and sample `num_prompts` groups."""
    cfg.trainer.output_dir = str(out)  # a built-in task's search index is built here
    task = prepare_task(cfg)
    cfg = with_task_index(cfg, task)
    torch.manual_seed(cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.cache_dir)
    model = load_model(cfg.model.path, cfg.model.dtype, cfg.model.cache_dir, device=resolve_device(cfg.trainer.device))
    train, val = load_prompt_sets(cfg, tokenizer, task)
    prompts = (train if split == "train" else val)[:num_prompts]
    if not prompts:
        raise SystemExit(f"appo rollout: the {split} set has no prompts")

    # Without training there is no previous policy, so fv_source=stale_policy ranks by entropy alone
    # (reported as rollout/fv_used=0); train_infer_mismatch compares a recompute with the sampler.
    def recompute(trajectories, with_entropy):
        return teacher_forced_scores(model, trajectories, temperature=cfg.rollout.temperature or 1.0,
                                     pad_id=tokenizer.pad_token_id or 0, autocast_dtype=cfg.model.autocast,
                                     with_entropy=with_entropy)

    score_inits = init_scorer(cfg.rollout.appo.fv_source, recompute, lambda trajectories: None)
    reward_fn = get_reward_fn(cfg.algorithm)
    log.info("sampling %d prompts x %d rows (%s) with %s", len(prompts), cfg.rollout.n, cfg.rollout.strategy,
             cfg.model.path)
    engine = make_engine(cfg.rollout, model, tokenizer)
    # rows finish one by one; APPO's branches and ARPO's copies count as they end too
    with build_tools(cfg.tools) as tools, tqdm(desc="rollout rows", unit="row", total=len(prompts) * cfg.rollout.n,
                                               disable=not progress, dynamic_ncols=True) as bar:
        groups, metrics = sample_groups(engine, tools, prompts, cfg, step=step, score_inits=score_inits,
                                        on_done=lambda _traj: bar.update(1))
    for group in groups:
        for traj in group.rows:
            traj.reward = float(reward_fn(traj.reward_text(tokenizer, cfg.algorithm.reward_text), group.prompt))
    return groups, metrics, tokenizer


def write_outputs(groups, metrics: dict, tokenizer, out: Path, title: str = "appo rollouts") -> None:
    with (out / "rollouts.jsonl").open("w", encoding="utf-8") as f:
        for g, group in enumerate(groups):
            for row, traj in enumerate(group.rows):
                record = {"prompt_index": getattr(group.prompt, "index", g), "row": row, **traj.to_dict(tokenizer)}
                f.write(json.dumps(record) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "rollouts.html").write_text(render_html(groups, tokenizer, title), encoding="utf-8")
