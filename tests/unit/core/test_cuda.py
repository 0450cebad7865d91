"""The core gives the same numbers on a CUDA device as on the CPU."""

from __future__ import annotations

import pytest
import torch

from appo.core.advantage import appo_advantages
from appo.core.branching import branching_scores, select_branch_points
from appo.core.loss import future_kl_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_core_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    rows, length = 4, 3000
    entropy = torch.rand(rows, length, generator=gen)
    log_ratio = 0.05 * torch.randn(rows, length, generator=gen)
    mask = (torch.rand(rows, length, generator=gen) < 0.8).int()
    old = -torch.rand(rows, length, generator=gen)
    adv = torch.randn(rows, 1, generator=gen).expand(rows, length).contiguous()
    cuda = torch.device("cuda")

    cpu_scores = branching_scores(entropy, log_ratio, mask, 0.99, 0.2)
    gpu_scores = branching_scores(entropy.to(cuda), log_ratio.to(cuda), mask.to(cuda), 0.99, 0.2)
    for a, b in zip(cpu_scores, gpu_scores, strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-4)
    groups = [0, 0, 1, 1]
    cpu_points = select_branch_points(*cpu_scores[2:], *cpu_scores[:2], mask, groups, 5)
    gpu_points = select_branch_points(*gpu_scores[2:], *gpu_scores[:2], mask.to(cuda), groups, 5)
    assert [p[:2] for p in cpu_points] == [p[:2] for p in gpu_points]

    new = (old + log_ratio).requires_grad_(True)
    new_gpu = (old + log_ratio).to(cuda).requires_grad_(True)
    loss_cpu, _ = future_kl_loss(new, old, adv, mask)
    loss_gpu, _ = future_kl_loss(new_gpu, old.to(cuda), adv.to(cuda), mask.to(cuda))
    loss_cpu.backward()
    loss_gpu.backward()
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(new.grad, new_gpu.grad.cpu(), atol=1e-7)

    scores = torch.tensor([1.0, 0.0, 0.5, 1.0])
    splits = [(0, 2, 10), (1, 3, 100)]
    is_branch = torch.tensor([0, 0, 1, 1])
    a = appo_advantages(scores, ["q"] * 4, is_branch, mask.float(), splits)
    b = appo_advantages(scores.to(cuda), ["q"] * 4, is_branch.to(cuda), mask.float().to(cuda), splits)
    assert torch.allclose(a, b.cpu(), atol=1e-6)
