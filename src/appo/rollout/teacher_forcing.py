"""Teacher-forced log-probs of response tokens: the one forward that the learner (PPO ratios, the KL
reference, the future value), SFT (its cross-entropy) and checks of the sampler all go through.

Rows are (prompt ids, response ids), right-padded. The LM head runs only on the positions that predict
response tokens, so the [rows x positions x vocab] logits never exist for prompt tokens (49k-wide
vocabularies make that the dominant memory cost).
"""

from __future__ import annotations

import torch

from appo.core.branching import entropy_from_logits
from appo.precision import autocast


def pad_rows(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int):
    """Right-padded [prompt | response] ids, their attention mask, the positions whose hidden state predicts
    each response token, the response tokens and the response mask (all [rows, L] except the first two)."""
    rows = len(prompt_ids)
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
    resp_len = max(1, max(len(r) for r in response_ids))
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attn = torch.zeros((rows, width), dtype=torch.long)
    where = torch.zeros((rows, resp_len), dtype=torch.long)
    targets = torch.full((rows, resp_len), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, resp_len))
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        seq = list(p) + list(r)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        n = len(r)
        if n:
            where[i, :n] = torch.arange(len(p) - 1, len(p) - 1 + n)
            targets[i, :n] = torch.tensor(r, dtype=torch.long)
            mask[i, :n] = 1.0
    return ids, attn, where, targets, mask


class ResponseLogits(torch.nn.Module):
    """Logits at the given positions only: decoder, pick, LM head. One module, so that FSDP2 can make it
    the root unit that owns the embeddings, the final norm and the (possibly tied) LM head.

    `where` is either [rows, L] position indices (the picked logits are [rows, L, V]) or a [rows, T] bool
    mask (SFT's trained positions; the picked logits come flattened, [N, V])."""

    def __init__(self, causal):
        super().__init__()
        self.causal = causal

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, where: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.causal.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                                           use_cache=False).last_hidden_state
        if where.dtype == torch.bool:
            picked = hidden[where]
        else:
            picked = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.causal.get_output_embeddings()(picked)


def response_log_probs(head: torch.nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]], *,
                       pad_id: int, device: torch.device, temperature: float = 1.0, autocast_dtype: str = "none",
                       with_entropy: bool = False):
    """Log-probs [rows, L] of the response tokens under `head` (a `ResponseLogits`), their entropies when
    asked, and the response mask; zero off the mask. Logits are divided by the sampling temperature, so
    the numbers describe the distribution the rows were sampled from."""
    ids, attn, where, targets, mask = (t.to(device) for t in pad_rows(prompt_ids, response_ids, pad_id))
    with autocast(autocast_dtype, device.type):
        logits = head(ids, attn, where)
    logits = logits.float() / temperature
    log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    entropy = entropy_from_logits(logits) * mask if with_entropy else None
    return log_probs * mask, entropy, mask


@torch.no_grad()
def teacher_forced_scores(model, trajectories, *, batch_size: int = 8, temperature: float = 1.0, pad_id: int = 0,
                          autocast_dtype: str = "none", with_entropy: bool = False
                          ) -> tuple[list[list[float]], list[list[float]] | None]:
    """Log-prob of every response token of each trajectory under `model`, aligned with its `token_ids`, and
    the exact entropies of those distributions when asked."""
    device = next(model.parameters()).device
    causal = model.get_base_model() if hasattr(model, "peft_config") else model
    head = ResponseLogits(causal)
    log_probs: list[list[float]] = []
    entropies: list[list[float]] | None = [] if with_entropy else None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(trajectories), batch_size):
            chunk = trajectories[start:start + batch_size]
            lp, ent, _ = response_log_probs(head, [t.prompt_ids for t in chunk], [t.token_ids for t in chunk],
                                            pad_id=pad_id, device=device, temperature=temperature,
                                            autocast_dtype=autocast_dtype, with_entropy=with_entropy)
            log_probs += [lp[i, : len(t.token_ids)].tolist() for i, t in enumerate(chunk)]
            if with_entropy:
                entropies += [ent[i, : len(t.token_ids)].tolist() for i, t in enumerate(chunk)]
    finally:
        model.train(was_training)
    return log_probs, entropies


def teacher_forced_logprobs(model, trajectories, **kwargs) -> list[list[float]]:
    """`teacher_forced_scores` without entropies."""
    return teacher_forced_scores(model, trajectories, **kwargs)[0]
