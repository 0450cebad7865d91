"""The RL trainer. `Trainer.rl_step` is the whole algorithm on one page:

    rollouts (algorithm.name's sampler) -> rewards -> advantages -> old / ref log-probs -> actor update
    -> weight sync -> metrics and rollout dump

Everything else here is bookkeeping: which prompts a step sees, which rows the learner trains on, and
how the state is saved so that a killed run resumes to the same numbers. Determinism: the data order of
an epoch is a permutation seeded by (data.seed, epoch), and each step seeds sampling with
(rollout.seed, step) and torch with (trainer.seed, step), so step N is the same computation whether
or not the run was interrupted before it.

Under torchrun (see `appo.train.distributed`) each rank samples, scores and computes advantages for a
contiguous slice of the step's prompts (a prompt's whole group lives on one rank, so group statistics are
exact), the sharded learner trains on the union, metrics are reduced over ranks, and rank 0 alone logs,
evaluates and writes rollouts and checkpoints.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from appo.config import Config, algorithm_class, resolve, to_dict
from appo.eval.evaluate import evaluate
from appo.models import load_model, merged_state_dict, resolve_device
from appo.rewards import RewardSet, build_rewards
from appo.rollout.engines import make_engine
from appo.rollout.trajectory import RolloutGroup, Trajectory
from appo.seeding import derive_seed
from appo.tools import build_tools
from appo.train import checkpoint as ckpt
from appo.train import distributed
from appo.train.learner import Learner, UpdateBatch
from appo.train.rollout_dump import write_rollout_dump
from appo.train.tracking import Tracker, read_metrics

log = logging.getLogger(__name__)


class StepTimer:
    """Seconds per named phase of one step (time/<phase> metrics)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def batch_for_step(num_prompts: int, batch_size: int, step: int, seed: int, shuffle: bool) -> tuple[int, list[int]]:
    """(epoch, prompt indices) of RL step `step` (1-based); the last partial batch of an epoch is dropped."""
    per_epoch = num_prompts // batch_size
    if per_epoch == 0:
        raise ValueError(f"data.batch_size={batch_size} is larger than the {num_prompts} training prompts")
    epoch, slot = divmod(step - 1, per_epoch)
    order = list(range(num_prompts))
    if shuffle:
        random.Random(derive_seed(seed, "epoch", epoch)).shuffle(order)
    return epoch, order[slot * batch_size:(slot + 1) * batch_size]


def _rows(values: torch.Tensor, trajs: list[Trajectory]) -> list[list[float]]:
    return [values[i, : len(t)].tolist() for i, t in enumerate(trajs)]


def score_groups(groups: list[RolloutGroup], rewards: RewardSet, tokenizer, text: str = "generated"
                 ) -> dict[str, float]:
    """Set `reward` on every row (initial and branch) from its decoded response (`algorithm.reward_text`);
    returns each reward function's mean (reward/<name>, when there are several)."""
    rows = [(traj, group.prompt) for group in groups for traj in group.rows]
    totals = rewards.score([(t.reward_text(tokenizer, text), p) for t, p in rows], [t.env_reward for t, _ in rows])
    for (traj, _), total in zip(rows, totals, strict=True):
        traj.reward = total
    return rewards.metrics()


def flatten(groups: list[RolloutGroup]) -> tuple[list[Trajectory], list[int], list[tuple[int, int, int]]]:
    """Rows in group order (each group's inits, then its branches), their group ids, and the
    (init row, branch row, split position) links APPO's advantage maps branch credit through."""
    rows, group_ids, splits = [], [], []
    for g, group in enumerate(groups):
        first = len(rows)
        rows += group.inits + group.branches
        group_ids += [g] * (len(group.inits) + len(group.branches))
        for j, branch in enumerate(group.branches):
            if branch.parent is not None and branch.split_pos is not None:
                splits.append((first + branch.parent, first + len(group.inits) + j, branch.split_pos))
    return rows, group_ids, splits


def loss_mask(rows: list[Trajectory], mask_branches: bool) -> torch.Tensor:
    """[rows, L]: 1 on tokens the policy sampled. With `mask_branches` (APPO) branch rows are fully masked:
    their outcome reaches the loss only through their parent's advantage. ARPO/GRPO train every row."""
    width = max(1, max(len(t) for t in rows))
    mask = torch.zeros(len(rows), width)
    for i, t in enumerate(rows):
        if not (mask_branches and t.kind == "branch"):
            mask[i, : len(t)] = torch.tensor(t.generated, dtype=torch.float32)
    return mask


def behaviour_log_probs(rows: list[Trajectory], width: int) -> torch.Tensor:
    """[rows, width]: the sampler's log-prob of each response token (0 where it did not sample)."""
    out = torch.zeros(len(rows), width)
    for i, t in enumerate(rows):
        out[i, :len(t)] = torch.tensor(t.logprobs, dtype=torch.float32)
    return out


# How a per-step statistic combines over ranks, by what it is: rollout counters (rows, tokens, calls,
# decisions, points, ...) add up; the loss terms too (each rank's is its share of the global normaliser);
# peaks, wall-clock seconds and round counts take the largest rank's; a minimum the smallest; shares,
# means and per-row figures are means over ranks, equal to the row-weighted mean because every rank holds
# the same number of rows (checked); the row metrics of `rollout_metrics` are computed over every rank's
# rows instead. `test_dist_fsdp_train` checks every count against the one-process run's.
LARGEST = ("time/", "seconds", "peak_", "_max", "rollout/rounds", "rollout/fv_used", "rollout/sampling_rounds")
MEANS = ("_mean", "_frac", "_per_row", "_std", "rollout/response_length", "actor/", "mismatch/", "epoch")
ADDED = ("actor/pg_loss", "actor/kl_loss", "actor/entropy")


def reduction(key: str) -> str:
    """'sum', 'max', 'min' or 'mean': how `key` combines over ranks."""
    if key in ADDED:
        return "sum"
    if any(part in key for part in LARGEST):
        return "max"
    if key.endswith("_min"):
        return "min"
    if key.startswith("rollout/") and not any(part in key for part in MEANS):
        return "sum"
    return "mean"


def reduce_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in dict.fromkeys(k for m in per_rank for k in m):
        values = [m[key] for m in per_rank if key in m]
        how = reduction(key)
        out[key] = (sum(values) if how == "sum" else max(values) if how == "max" else min(values) if how == "min"
                    else sum(values) / len(values))
    return out


def row_summaries(rows: list[Trajectory]) -> list[dict]:
    """What `rollout_metrics` reads of each row (small: gathered from every rank under torchrun)."""
    return [{"reward": t.reward, "initial": t.kind == "init" and not t.meta.get("refill"), "tool_calls": t.tool_calls,
             "length": len(t), "finish_reason": t.finish_reason,
             "entropy_sum": sum(e for e, g in zip(t.entropies, t.generated) if g), "sampled": sum(t.generated)}
            for t in rows]


def rollout_metrics(rows: list[dict]) -> dict[str, float]:
    """Reward and row statistics over `row_summaries`; reward/init_mean is over the initial rollouts only
    (not ARPO's or APPO's refill rows, which are fresh samples drawn to fill open slots)."""
    rewards = [t["reward"] for t in rows]
    inits = [t for t in rows if t["initial"]]
    return {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/init_mean": sum(t["reward"] for t in inits) / max(1, len(inits)),
        # Full credit (>= 1): exact answers under the built-in and deep-research rewards.
        "reward/accuracy": sum(r >= 1.0 for r in rewards) / len(rewards),
        "rollout/tool_calls_mean": sum(t["tool_calls"] for t in rows) / len(rows),
        "rollout/response_length_mean": sum(t["length"] for t in rows) / len(rows),
        "rollout/truncated_frac": sum(t["finish_reason"] == "length" for t in rows) / len(rows),
        # The sampling policy's entropy (nats per sampled token; top-k estimates where the engine's are).
        "rollout/entropy_mean": sum(t["entropy_sum"] for t in rows) / max(1, sum(t["sampled"] for t in rows)),
    }


def rollout_dir(cfg: Config) -> Path:
    """Where each step's rollouts are written (trainer.rollout_data_dir, else output_dir/rollouts)."""
    return Path(cfg.trainer.rollout_data_dir or Path(cfg.trainer.output_dir) / "rollouts")


def optimizer_steps_per_rl_step(cfg: Config) -> int:
    r, a = cfg.rollout, cfg.actor
    drops = cfg.algorithm.adv_estimator == "appo" and cfg.algorithm.drop_branch_rows  # APPO's branch rows
    rows = cfg.data.batch_size * (r.initial_rollouts if drops else r.n)
    return a.ppo_epochs * -(-rows // (a.mini_batch_size or rows))


def inert_future_kl(cfg: Config) -> str | None:
    """Why `actor.loss_mode=future_kl` would change nothing, or None. It re-weights advantages by how far
    the policy has moved since sampling; with one on-policy optimizer step per RL step it has not moved, the
    weight is exactly 1 and the step is vanilla's (twice the gradient: the same Adam step)."""
    if cfg.actor.loss_mode != "future_kl" or optimizer_steps_per_rl_step(cfg) > 1:
        return None
    return ("actor.loss_mode=future_kl acts only when an RL step takes several optimizer steps; this one takes "
            "one, so the update equals the vanilla loss's. Set actor.ppo_epochs > 1 or an "
            "actor.mini_batch_size below the update rows per step for it to act")


class Trainer:
    """Holds the learner, engine, tools, reward and data for an RL run; `fit()` runs it (resumable)."""

    def __init__(self, cfg: Config, model, tokenizer, train_prompts: list, val_prompts: list | None = None,
                 start_path: str | None = None, progress: bool = True, *, tools=None,
                 rewards: RewardSet | None = None, engine=None):
        """`tools` (a ToolRunner), `rewards` (a RewardSet, see `appo.rewards.build_rewards`) and `engine`
        replace the ones the config would build; the trainer closes the tools either way. An engine handed
        in gets the policy's weights now and after every update (`Engine.load_weights`)."""
        cfg = resolve(cfg)  # a Config built in code gets what algorithm.name implies, as a loaded one has
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_prompts, self.val_prompts = train_prompts, val_prompts or []
        self.out = Path(cfg.trainer.output_dir)
        self.progress = progress and distributed.is_main()
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.device = resolve_device(cfg.trainer.device)
        self.start_path = start_path or cfg.model.path
        b = cfg.data.batch_size
        self.steps_per_epoch = len(train_prompts) // b
        self.total_steps = cfg.trainer.total_steps or self.steps_per_epoch * cfg.trainer.total_epochs
        ref = None
        if cfg.actor.use_kl_loss and cfg.model.lora.rank == 0:
            ref = load_model(cfg.model.ref_path or self.start_path, cfg.model.dtype, cfg.model.cache_dir)
        # FSDP forwards are collectives and ranks generate different numbers of tokens, so under torchrun
        # the HF engine samples with its own unsharded copy, refreshed after every update (as vLLM is).
        replica = copy.deepcopy(model) if self.world > 1 and cfg.rollout.engine == "hf" else None
        self.learner = Learner(model, cfg.actor, cfg.model, pad_id=tokenizer.pad_token_id, device=self.device,
                               total_optimizer_steps=self.total_steps * optimizer_steps_per_rl_step(cfg),
                               ref_model=ref, temperature=cfg.rollout.temperature or 1.0)
        self.engine = engine if engine is not None else make_engine(
            cfg.rollout, replica if replica is not None else self.learner.model, tokenizer, own_copy=replica is not None)
        if engine is not None:  # an engine handed in samples with its own copy: start it from these weights
            self.engine.load_weights(self._full_weights)
        if self.world > 1 and cfg.rollout.engine == "vllm":
            # vLLM started from the checkpoint path; the sharded module's own weights (after an SFT in this
            # process) reach it only gathered, a collective every rank makes here. Untested here (no GPUs).
            self.engine.load_weights(self._full_weights)
        self.tools = tools if tools is not None else build_tools(cfg.tools)
        self.reward_fn = rewards if rewards is not None else build_rewards(cfg.algorithm)
        self.algorithm = algorithm_class(cfg.algorithm.name)(cfg, self.learner)
        self.step = 0
        if (inert := inert_future_kl(cfg)) and distributed.is_main():
            log.warning(inert)

    # ------------------------------------------------------------------------------- the RL step

    def rl_step(self, step: int) -> dict[str, float]:
        cfg, learner, timer = self.cfg, self.learner, StepTimer()
        torch.manual_seed(derive_seed(cfg.trainer.seed, "step", step))
        epoch, idx = batch_for_step(len(self.train_prompts), cfg.data.batch_size, step, cfg.data.seed,
                                    cfg.data.shuffle)
        first, mine = distributed.my_share(idx)
        prompts = [self.train_prompts[i] for i in mine]

        # 1. rollouts with their rewards (the algorithm samples: initial rows, then branches or copies)
        algo, reward_metrics = self.algorithm, {}

        def score(groups: list[RolloutGroup]) -> None:
            with timer("reward"):
                reward_metrics.update(score_groups(groups, self.reward_fn, self.tokenizer, cfg.algorithm.reward_text))

        def refill(round_: int) -> tuple[list, int]:  # further prompts (dynamic sampling), seeded by step and round
            more = random.Random(derive_seed(cfg.data.seed, "refill", step, round_)).sample(
                range(len(self.train_prompts)), cfg.data.batch_size)
            at, mine_more = distributed.my_share(more)
            return [self.train_prompts[i] for i in mine_more], round_ * cfg.data.batch_size + at

        with timer("rollout"):
            groups, roll_stats = algo.rollouts(self.engine, self.tools, prompts, score, step=step, first_group=first,
                                               refill=refill)
        timer.seconds["rollout"] -= timer.seconds.get("reward", 0.0)
        # 2. advantages over all rows, branch rows included; 3. keep the rows that carry loss
        rows, group_ids, splits = flatten(groups)
        mask = loss_mask(rows, mask_branches=not algo.trains_branch_tokens())
        adv = algo.advantages(rows, group_ids, splits, mask)
        keep = [i for i, t in enumerate(rows) if not algo.drops(t)]
        prompt_ids, response_ids = [rows[i].prompt_ids for i in keep], [rows[i].token_ids for i in keep]
        if len(set(distributed.gather_objects(len(keep)))) > 1:
            # Sharded forwards must pair up across ranks: unequal row counts would hang the update.
            raise RuntimeError("ranks hold different numbers of update rows; every strategy must return "
                               "rollout.n rows per prompt")
        # 4. old log-probs (the PPO ratio's denominator) and reference log-probs, on the kept rows only. A
        #    one-optimizer-step update takes the former from its own forward (None here); otherwise the
        #    algorithm may already hold them (APPO's rescoring of its initial rows).
        with timer("old_log_probs"):
            old_log_probs = algo.old_log_probs([rows[i] for i in keep])
            if learner.single_step(len(keep)):
                old_log_probs = None
            elif old_log_probs is None:
                old_log_probs, _ = learner.log_probs(prompt_ids, response_ids)
            ref_log_probs = (learner.log_probs(prompt_ids, response_ids, reference=True)[0]
                             if cfg.actor.use_kl_loss else None)
        batch = UpdateBatch(prompt_ids, response_ids, mask[keep], old_log_probs, adv[keep], ref_log_probs,
                            sampler_log_probs=behaviour_log_probs([rows[i] for i in keep], mask.shape[1]),
                            correct=algo.corrects_rollouts())
        # 5. actor update, between the algorithm's hooks (APPO keeps the weights it starts from)
        with timer("update"):
            algo.before_update()
            update_metrics = learner.update(batch)
            algo.after_update()
        # 6. weight sync: the engine pulls the new weights only when it samples with its own copy
        with timer("sync"):
            self.engine.load_weights(self._full_weights)
        # 7. metrics and rollout dump
        summaries = row_summaries(rows)
        if self.world > 1:  # the row metrics over every rank's rows, exactly as one process computes them
            summaries = [t for part in distributed.gather_objects(summaries) for t in part]
        metrics = {"epoch": epoch, **reward_metrics, **update_metrics, **roll_stats, "rollout/update_rows": len(keep)}
        tool_s = roll_stats.get("rollout/tool_seconds", 0.0)
        fv_s = roll_stats.get("rollout/fv_seconds", 0.0)
        metrics.update({"time/generate": timer.seconds["rollout"] - tool_s - fv_s, "time/tools": tool_s,
                        "time/future_value": fv_s,
                        "time/reward": timer.seconds["reward"],
                        "time/learner": timer.seconds["old_log_probs"] + timer.seconds["update"],
                        "time/sync": timer.seconds["sync"], "time/step": sum(timer.seconds.values())})
        if self.world > 1:
            metrics = reduce_metrics(distributed.gather_objects(metrics))
        metrics.update(rollout_metrics(summaries))
        if cfg.trainer.dump_rollouts:
            self._dump(step, rows, adv, first)
        return metrics

    def _full_weights(self) -> dict:
        """The policy's full weights for an engine with its own copy (LoRA merged; gathered under torchrun,
        a collective that every rank's engine calls alike)."""
        if self.world > 1:
            return distributed.full_state_dict(self.learner.model, everywhere=True)
        return merged_state_dict(self.learner.model)

    def _dump(self, step: int, rows: list[Trajectory], adv: torch.Tensor, first_group: int = 0) -> None:
        records = []
        for i, t in enumerate(rows):
            record = t.to_dict(self.tokenizer)
            record["group"] = first_group + t.group  # step-wide, as in a one-process run
            record["advantage_first_token"] = float(adv[i, 0]) if adv.shape[1] else 0.0
            record["advantages"] = adv[i, : len(t)].tolist()  # per token, as trained (0 where masked)
            records.append(record)
        if self.world > 1:  # rank 0 writes every rank's rows, in rank (= prompt) order
            records = [r for part in distributed.gather_objects(records) for r in part]
        if not distributed.is_main():
            return
        write_rollout_dump(rollout_dir(self.cfg) / f"step_{step}.jsonl", records, step)

    # ---------------------------------------------------------------------------------- the loop

    def validate(self, name: str) -> dict:
        """Evaluate on the held-out prompts. Under torchrun rank 0 evaluates alone with its own engine (no
        collective runs inside) while the others wait at a barrier; they get an empty summary."""
        summary = {}
        if distributed.is_main():
            summary = evaluate(self.learner.model, self.tokenizer, self.val_prompts, self.cfg, name=name,
                               output_dir=self.out / "eval" / name, engine=self.engine, tools=self.tools,
                               rewards=self.reward_fn, progress=self.progress)
        distributed.barrier()
        return summary

    def save(self) -> None:
        """Checkpoint the current step. Collective under torchrun (full weights and optimizer state are
        gathered to rank 0, which writes them)."""
        weights = distributed.full_state_dict(self.learner.model) if self.world > 1 else None
        state = self.state()
        if distributed.is_main():
            ckpt.save_checkpoint(self.out, self.step, self.learner.model, self.tokenizer, state,
                                 state_dict=weights, trained_on=[p.messages for p in self.train_prompts],
                                 tool_names=tuple(self.tools.names), tool_format=self.cfg.tools.format)
        distributed.barrier()

    def state(self) -> dict:
        return {"learner": self.learner.state_dict(), "start_path": self.start_path,
                "total_steps": self.total_steps, "history": read_metrics(self.out / "metrics.jsonl")}

    def restore(self, ckpt_dir: Path) -> None:
        state = ckpt.load_trainer_state(ckpt_dir)
        try:
            if self.learner.is_lora and "adapter" in state:
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.learner.model, state["adapter"])
            self.learner.load_state_dict(state["learner"])
            ckpt.set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ckpt.CheckpointError(f"{Path(ckpt_dir) / 'trainer_state.pt'}: does not fit this run "
                                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.step = state["step"]

    def fit(self, resume: bool = False) -> dict:
        """Run RL from step 1 (or after the latest checkpoint with `resume`); returns the last metrics."""
        cfg = self.cfg
        resume_from = ckpt.resume_checkpoint(self.out) if resume else None
        if resume_from is not None:
            self.restore(resume_from)
            log.info("resuming after step %d from %s", self.step, resume_from)
        tracker = Tracker(self.out, cfg.trainer.loggers, cfg.trainer.experiment_name, to_dict(cfg),
                          resume_step=self.step if resume_from is not None else None,
                          project=cfg.trainer.project_name) if distributed.is_main() else None
        if cfg.trainer.val_before_train and self.step == 0 and self.val_prompts:
            before = {f"val/{k}": v for k, v in self.validate("step_0").items() if isinstance(v, (int, float))}
            if tracker is not None:
                tracker.log(before, 0)
        deadline = time.time() + cfg.trainer.max_minutes * 60 if cfg.trainer.max_minutes else None
        last: dict = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc="rl", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < self.total_steps:
                if deadline is not None and distributed.any_rank(time.time() > deadline):
                    log.info("trainer.max_minutes reached after step %d", self.step)
                    break
                step = self.step + 1
                last = self.rl_step(step)
                if cfg.trainer.test_freq and step % cfg.trainer.test_freq == 0 and self.val_prompts:
                    last.update({f"val/{k}": v for k, v in self.validate(f"step_{step}").items()
                                 if isinstance(v, (int, float))})
                if tracker is not None:
                    tracker.log(last, step)
                self.step = step
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward/mean']:.3f}")
                if cfg.trainer.save_freq and step % cfg.trainer.save_freq == 0:
                    self.save()
            if self.step and ckpt.latest_checkpoint(self.out) != ckpt.checkpoint_root(self.out) / f"step_{self.step}":
                self.save()
        finally:
            bar.close()
            if tracker is not None:
                tracker.close()
        return last

    def close(self) -> None:
        self.tools.close()
