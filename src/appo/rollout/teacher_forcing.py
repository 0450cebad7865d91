"""Teacher-forced log-probs of response tokens: the one forward that the learner (PPO ratios, the KL
reference, the future value), SFT (its cross-entropy) and checks of the sampler all go through.

Rows are (prompt ids, response ids), right-padded. The LM head runs only on the positions that predict
response tokens, so the [rows x positions x vocab] logits never exist for prompt tokens (49k-wide
vocabularies make that the dominant memory cost).

With `share_prompts`, rows with the same prompt (a group's rollouts) run their common prefix once: a
first pass over each distinct prefix keeps its KV cache, a second pass runs every row's remaining tokens
on top of its group's cache. Causal attention makes the prefix's hidden states independent of what
follows, so the log-probs are those of the unshared forward up to float rounding, and the gradient
through the shared prefix is the sum over the rows that read it, as it is unshared.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class SharedPrefixRows:
    """Rows laid out for the two-pass forward (see the module docstring). `where` indexes the concatenation
    [prefix hidden states (C) | suffix hidden states (S)] of each row; `attn` covers the same C + S keys."""
    prefix_ids: torch.Tensor    # [groups, C], right-padded
    prefix_attn: torch.Tensor   # [groups, C]
    group: torch.Tensor         # [rows]: each row's prefix
    ids: torch.Tensor           # [rows, S]: the tokens after the prefix, right-padded
    attn: torch.Tensor          # [rows, C + S]
    position_ids: torch.Tensor  # [rows, S]
    where: torch.Tensor         # [rows, R]
    targets: torch.Tensor       # [rows, R]
    mask: torch.Tensor          # [rows, R]

    def to(self, device) -> SharedPrefixRows:
        return SharedPrefixRows(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def common_prefix_length(seqs: list[list[int]]) -> int:
    """How many leading ids all of `seqs` have in common."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def _shared_layout(prompt_ids: list[list[int]], response_ids: list[list[int]]):
    """Groups (prompt -> rows), each row's inputs, its group's prefix length and the two padded widths."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompt_ids):
        groups.setdefault(tuple(p), []).append(i)
    # A row's last token predicts nothing: it is never an input.
    inputs = [(list(p) + list(r))[:-1] for p, r in zip(prompt_ids, response_ids, strict=True)]
    prefix_len = {}
    for members in groups.values():
        # Rows with nothing to score need no hidden state: they do not shorten their group's prefix.
        scored = [i for i in members if response_ids[i]] or members
        c = common_prefix_length([inputs[i] for i in scored])
        for i in members:
            prefix_len[i] = c
    width_c = max(1, max(prefix_len.values()))
    # At least one suffix column (padding when every row is all prefix): under FSDP2 each decoder pass
    # all-gathers the weights, so every rank must run both passes whatever its rows hold.
    width_s = max(1, max(len(inputs[i]) - prefix_len[i] for i in range(len(inputs))))
    return groups, inputs, prefix_len, width_c, width_s


def forward_tokens(prompt_ids: list[list[int]], response_ids: list[list[int]], shared: bool) -> int:
    """Token positions the decoder computes for these rows, padding included: rows x the longest row, or
    with `shared` prefixes, groups x the longest prefix + rows x the longest remainder."""
    if not shared:
        return len(prompt_ids) * max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
    groups, _, _, width_c, width_s = _shared_layout(prompt_ids, response_ids)
    return len(groups) * width_c + len(prompt_ids) * width_s


def shared_prefix_rows(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> SharedPrefixRows:
    """Rows grouped by prompt; a group's prefix is the longest start its rows' whole sequences share (at
    least the prompt, unless no row of the group has a response). A row that is all prefix (a group of
    one) has a suffix of one padding column."""
    groups, inputs, prefix_len, width_c, width_s = _shared_layout(prompt_ids, response_ids)
    rows, n_groups = len(inputs), len(groups)
    resp_len = max(1, max(len(r) for r in response_ids))
    prefix_ids = torch.full((n_groups, width_c), pad_id, dtype=torch.long)
    prefix_attn = torch.zeros((n_groups, width_c), dtype=torch.long)
    group = torch.zeros(rows, dtype=torch.long)
    ids = torch.full((rows, width_s), pad_id, dtype=torch.long)
    attn = torch.zeros((rows, width_c + width_s), dtype=torch.long)
    position_ids = torch.zeros((rows, width_s), dtype=torch.long)
    where = torch.zeros((rows, resp_len), dtype=torch.long)
    targets = torch.full((rows, resp_len), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, resp_len))
    for g, members in enumerate(groups.values()):
        c = prefix_len[members[0]]
        source = max(members, key=lambda i: len(inputs[i]))  # a row whose inputs hold the whole prefix
        prefix_ids[g, :c] = torch.tensor(inputs[source][:c], dtype=torch.long)
        prefix_attn[g, :c] = 1
        for i in members:
            rest = inputs[i][c:]
            group[i] = g
            ids[i, :len(rest)] = torch.tensor(rest, dtype=torch.long)
            position_ids[i, :len(rest)] = torch.arange(c, c + len(rest))
            attn[i, :c] = 1
            attn[i, width_c:width_c + len(rest)] = 1
            n = len(response_ids[i])
            if n:
                q = torch.arange(len(prompt_ids[i]) - 1, len(prompt_ids[i]) - 1 + n)
                where[i, :n] = torch.where(q < c, q, width_c + q - c)
                targets[i, :n] = torch.tensor(response_ids[i], dtype=torch.long)
                mask[i, :n] = 1.0
    return SharedPrefixRows(prefix_ids, prefix_attn, group, ids, attn, position_ids, where, targets, mask)


class ResponseLogits(torch.nn.Module):
    """Logits at the given positions only: decoder, pick, LM head. One module, so that FSDP2 can make it
    the root unit that owns the embeddings, the final norm and the (possibly tied) LM head.

    `where` is either [rows, L] position indices (the picked logits are [rows, L, V]) or a [rows, T] bool
    mask (SFT's trained positions; the picked logits come flattened, [N, V]).

    Given `prefix` (a `SharedPrefixRows`' prefix_ids, prefix_attn and group), both passes of the shared-prefix
    forward run inside this one call, so that FSDP2 still sees one forward of its root unit."""

    def __init__(self, causal):
        super().__init__()
        self.causal = causal

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, where: torch.Tensor,
                position_ids: torch.Tensor | None = None,
                prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        decoder = self.causal.get_decoder()
        if prefix is None:
            hidden = decoder(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                             use_cache=False).last_hidden_state
        else:
            hidden = self._shared_prefix_hidden(decoder, ids, attn, position_ids, *prefix)
        if where.dtype == torch.bool:
            picked = hidden[where]
        else:
            picked = hidden.gather(1, where.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.causal.get_output_embeddings()(picked)

    def _shared_prefix_hidden(self, decoder, ids, attn, position_ids, prefix_ids, prefix_attn, group):
        if getattr(self.causal, "is_gradient_checkpointing", False) and torch.is_grad_enabled() and self.training:
            # Checkpointed layers drop the cache, and the second pass would silently lose its prefix.
            raise RuntimeError("the shared-prefix forward needs the prefix's KV cache, which gradient "
                               "checkpointing drops; score these rows unshared")
        first = decoder(input_ids=prefix_ids, attention_mask=prefix_attn, use_cache=True)
        prefix_hidden = first.last_hidden_state.index_select(0, group)
        cache = first.past_key_values
        cache.reorder_cache(group)  # each row reads its group's keys and values (a differentiable gather)
        rest = decoder(input_ids=ids, attention_mask=attn, position_ids=position_ids, past_key_values=cache,
                       use_cache=True).last_hidden_state
        return torch.cat([prefix_hidden, rest], dim=1)


def response_log_probs(head: torch.nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]], *,
                       pad_id: int, device: torch.device, temperature: float = 1.0, autocast_dtype: str = "none",
                       with_entropy: bool = False, share_prompts: bool = False):
    """Log-probs [rows, L] of the response tokens under `head` (a `ResponseLogits`), their entropies when
    asked, and the response mask; zero off the mask. Logits are divided by the sampling temperature, so
    the numbers describe the distribution the rows were sampled from. `share_prompts`: rows with the same
    prompt run their common prefix once (module docstring)."""
    if share_prompts:
        rows = shared_prefix_rows(prompt_ids, response_ids, pad_id).to(device)
        targets, mask = rows.targets, rows.mask
        with autocast(autocast_dtype, device.type):
            logits = head(rows.ids, rows.attn, rows.where, rows.position_ids,
                          prefix=(rows.prefix_ids, rows.prefix_attn, rows.group))
    else:
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
