"""The shared-prefix forward under FSDP2 with two gloo processes: every rank runs the same collectives,
even when all of one rank's rows equal their group's shared prefix (nothing left for the second pass)."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, rows_by_rank, queue) -> None:
    import os

    import torch
    import torch.distributed as dist
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from appo.rollout.teacher_forcing import ResponseLogits, response_log_probs
    from appo.train import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = Qwen2ForCausalLM(cfg)
        head = ResponseLogits(model)
        distributed.shard(head, model.get_decoder().layers)
        prompts, responses = rows_by_rank[rank]
        lp, _, mask = response_log_probs(head, prompts, responses, pad_id=0, device=torch.device("cpu"),
                                         share_prompts=True)
        (lp * mask).sum().backward()
        queue.put((rank, "ok", float(lp.sum())))
    except Exception as e:  # the parent reports what each rank saw
        queue.put((rank, "error", f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def test_rank_whose_rows_are_all_prefix_runs_the_same_collectives():
    import torch.multiprocessing as mp

    # rank 0: two identical rows (a prompt whose rollouts came out the same): all of it is shared prefix;
    # rank 1: rows that differ after the prompt, so its second pass has tokens.
    same = ([[1, 2, 3], [1, 2, 3]], [[4, 5, 6], [4, 5, 6]])
    differ = ([[1, 2, 3], [1, 2, 3]], [[4, 5, 6], [7, 8]])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, [same, differ], queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        # a collective mismatch aborts a rank without a word: stop waiting once a rank has died
        while len(results) < len(procs) and not any(p.exitcode not in (None, 0) for p in procs):
            try:
                rank, status, value = queue.get(timeout=1)
            except Exception:
                continue
            results[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert len(results) == 2, f"a rank died: exit codes {[p.exitcode for p in procs]}, results {results}"
    assert results[0][0] == results[1][0] == "ok", results
