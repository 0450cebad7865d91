"""Sampling metrics: unbiased pass@k and majority-vote maj@k."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: ``1 − C(n−c, k)/C(n, k)``.

    Evaluated as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)``, which never forms the (huge) binomials.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: Sequence[str | None], key: Callable[[str], Hashable] = str.strip) -> str | None:
    """The most frequent answer under the equivalence ``key`` (missing or empty answers abstain).

    Ties go to the answer class that appears first in ``answers``, so the result does not depend on
    hashing or sorting. The first answer of the winning class is returned; None if all abstain.
    """
    votes: dict[Hashable, int] = {}
    first: dict[Hashable, str] = {}
    for answer in answers:
        if answer is None:
            continue
        k = key(answer)
        if k is None or k == "":
            continue
        votes[k] = votes.get(k, 0) + 1
        first.setdefault(k, answer)
    if not votes:
        return None
    # max() returns the first maximal item in insertion (= first appearance) order.
    winner = max(votes, key=votes.__getitem__)
    return first[winner]


def maj_at_k(answers: Sequence[str | None], k: int, is_correct: Callable[[str], bool],
             key: Callable[[str], Hashable] = str.strip) -> float:
    """maj@k: 1.0 if the majority answer of the first k (see :func:`majority_vote`) is correct, else 0.0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(answers) < k:
        raise ValueError(f"maj@{k} needs at least {k} answers, got {len(answers)}")
    winner = majority_vote(answers[:k], key)
    return float(winner is not None and is_correct(winner))
