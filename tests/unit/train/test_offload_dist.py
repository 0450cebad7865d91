"""FSDP2 CPU offload of parameters (policy and reference) and of AdamW's moments, under two gloo processes:
the update equals the one without offload. On a CPU-only machine the shards live in CPU memory either way,
so this checks that the offload paths run and change no number; the GPU<->CPU copies need CUDA."""

from __future__ import annotations

import pytest

from ..two_ranks import run_two_ranks

pytestmark = pytest.mark.dist


def _update(rank: int, offload: dict) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from appo.config import ActorConfig, FsdpConfig, ModelConfig
    from appo.train.learner import Learner, UpdateBatch

    def model():
        torch.manual_seed(0)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2))

    actor = ActorConfig(lr=1e-2, grad_clip=0.0, use_kl_loss=True, kl_loss_coef=0.1, mini_batch_size=4,
                        fsdp=FsdpConfig(**offload))
    learner = Learner(model(), actor, ModelConfig(autocast="none"), pad_id=0, ref_model=model())
    prompts = [[1, 2, 3], [1, 2, 3]] if rank == 0 else [[7, 8], [9]]
    responses = [[4, 5 + rank], [6, 7, 8]]
    old, _ = learner.log_probs(prompts, responses)
    ref, _ = learner.log_probs(prompts, responses, reference=True)
    mask = (old != 0).float()
    adv = torch.tensor([[1.0], [-0.5]]).expand_as(old) * mask
    for _ in range(2):  # two updates: the second starts from moments that were offloaded
        metrics = learner.update(UpdateBatch(prompts, responses, mask, old - 0.1 * mask, adv.clone(), ref))
    moments = [v for s in learner.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]

    def policies(head):  # the offload policy of each FSDP2 unit
        units = [m for m in head.modules() if hasattr(m, "_get_fsdp_state")]
        return sorted({type(m._get_fsdp_state()._fsdp_param_group.offload_policy).__name__ for m in units})

    return {"weights": {k: v.full_tensor() for k, v in learner.model.state_dict().items()},
            "grad_norm": metrics["actor/grad_norm"], "moments_on": sorted({str(m.device) for m in moments}),
            "policy": policies(learner.head), "ref_policy": policies(learner.ref_head)}


@pytest.mark.parametrize("offload", [dict(param_offload=True, ref_param_offload=True), dict(optimizer_offload=True)])
def test_offloaded_update_equals_the_plain_one(offload):
    import torch

    plain = run_two_ranks(_update, {})
    off = run_two_ranks(_update, offload)
    for rank in (0, 1):
        assert off[rank]["grad_norm"] == pytest.approx(plain[rank]["grad_norm"], rel=1e-6)
        w0, w1 = plain[rank]["weights"], off[rank]["weights"]
        assert all(torch.allclose(w0[k], w1[k], atol=1e-7) for k in w0)
        assert off[rank]["moments_on"] == ["cpu"]
        want = ["CPUOffloadPolicy"] if offload.get("param_offload") else ["OffloadPolicy"]
        assert off[rank]["policy"] == off[rank]["ref_policy"] == want and plain[rank]["policy"] == ["OffloadPolicy"]
