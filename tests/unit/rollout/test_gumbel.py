"""Counter-based Gumbel-max: the hash is splitmix64 bit for bit, the draws are standard Gumbels, and the
sampler picks tokens with exactly the model's probabilities, whether the tail stands in or not."""

from __future__ import annotations

import math

import pytest
import torch

from appo.rollout.gumbel import gumbel_max, gumbel_noise, hash_bits, noise_key


def _splitmix64(x: int) -> int:
    """The reference splitmix64 finaliser in exact integer arithmetic."""
    mask = (1 << 64) - 1
    x &= mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def test_gumbel_noise_is_splitmix64_bit_for_bit():
    """The tensor hash relies on int64 arithmetic wrapping modulo 2**64 and on masked (logical) shifts; a
    platform where either differs must fail here, not sample from a skewed distribution."""
    keys = [0, 1, 2**63 - 1, 12345678901234567, 2**64 - 5]
    bits, g = hash_bits(keys, torch.arange(300)), gumbel_noise(keys, torch.arange(300))
    for r, key in enumerate(keys):
        for v in (0, 1, 7, 299):
            z = _splitmix64(key + v * 0x9E3779B97F4A7C15)
            assert int(bits[r, v]) & ((1 << 64) - 1) == z
            w = ((z >> 11) + 0.5) * 2.0 ** -53
            assert float(g[r, v]) == pytest.approx(-math.log(-math.log1p(-w)), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("top", [2, 64])
def test_gumbel_max_samples_the_distribution(top):
    """With `top` below the vocabulary, the tail stands in for most entries (half the mass here), so both
    ways a token can be picked are exercised."""
    p = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02])
    n = 40000
    logp = p.log().expand(n, -1)
    draws = gumbel_max(logp, [noise_key(seed, 3) for seed in range(n)], top=top)
    freq = torch.bincount(draws, minlength=len(p)).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert torch.all((freq - p.double()).abs() < 4 * se), (freq, p)


def test_gumbel_noise_moments_and_independence():
    g = gumbel_noise([noise_key(7, t) for t in range(200)], torch.arange(1000)).flatten()
    assert abs(float(g.mean()) - 0.5772) < 0.01 and abs(float(g.var()) - math.pi ** 2 / 6) < 0.03
    a, b, c = (gumbel_noise([noise_key(s, t)], torch.arange(5000))[0] for s, t in ((1, 0), (1, 1), (2, 0)))
    assert float(torch.corrcoef(torch.stack([a, b, c]))[0, 1:].abs().max()) < 0.05
