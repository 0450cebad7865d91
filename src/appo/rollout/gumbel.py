"""Counter-based Gumbel-max sampling: the noise is a pure function of (a row's seed, its step, the
vocabulary entry), and only the likeliest entries draw their own.

Why not a torch generator per row: drawing 49k float64 uniforms per row, one row at a time, cost over half
as much as the model's forward per decode step (docs/performance.md#measurements-behind-the-codes-choices), and a stateful
stream depends on how many draws came before.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def _as_int64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


def _mix(z: int) -> int:
    """splitmix64's finaliser (exact integer arithmetic)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def noise_key(seed: int, step: int) -> int:
    """The noise key of a request's `step`-th sampled token."""
    return _mix(_mix(seed) + (step + 1) * _GOLDEN)


def hash_bits(keys: list[int], ids: torch.Tensor) -> torch.Tensor:
    """splitmix64(keys[r] + ids[r, j] * golden) as int64 [rows, n] (`ids` [rows, n] or [n]). Tensor
    arithmetic wraps modulo 2**64 and `>>` is arithmetic there, so every shift is masked to make it logical
    (checked bit for bit in the tests)."""
    z = (torch.tensor([_as_int64(k) for k in keys], dtype=torch.long, device=ids.device)[:, None]
         + ids * _as_int64(_GOLDEN))
    t = torch.empty_like(z)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        t.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(t)
        if mult is not None:
            z.mul_(_as_int64(mult))
    return z


def gumbel_noise(keys: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel draws (float64) for entries `ids` of each row, a pure function of (key, id): w, the
    top 53 bits of `hash_bits` as a uniform in (0, 1), then g = -log(-log1p(-w)) (log1p keeps the precision
    of the large draws, the ones that decide a sample)."""
    z = hash_bits(keys, ids)
    w = ((z >> 11) & ((1 << 53) - 1)).double().add_(0.5).mul_(2.0 ** -53)
    return w.neg_().log1p_().neg_().log_().neg_()


_TAIL = 0xD1B54A32D192ED03  # derives a row's key for the draw that stands for its tail


def gumbel_max(logp: torch.Tensor, keys: list[int], top: int = 64) -> torch.Tensor:
    """One token per row of `logp` [rows, vocab], distributed exactly as softmax(logp): argmax(logp + g)
    with iid standard Gumbels g from `gumbel_noise`. Only the `top` likeliest entries draw their own g. The
    best of the others (the tail) is, in distribution, the log of their total probability plus one
    Gumbel, drawn from a key of its own; only when that beats the top entries is the winner picked among
    the tail, by their own draws (the max of Gumbel-perturbed scores is independent of which entry attains
    it)."""
    top = min(top, logp.shape[-1])
    top_lp, top_ids = logp.topk(top, dim=-1)
    best, at = (top_lp.double() + gumbel_noise(keys, top_ids)).max(-1)
    tokens = top_ids.gather(-1, at[:, None]).squeeze(-1)
    if top == logp.shape[-1]:
        return tokens
    tail_lse = logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1).double()
    tail = tail_lse + gumbel_noise([_mix(k ^ _TAIL) for k in keys], top_ids.new_zeros(1))[:, 0]
    rows = (tail > best).nonzero().flatten()
    if len(rows):
        scores = logp[rows].double() + gumbel_noise([keys[r] for r in rows.tolist()],
                                                    torch.arange(logp.shape[-1], device=logp.device))
        tokens[rows] = scores.scatter_(-1, top_ids[rows], float("-inf")).argmax(-1)
    return tokens
