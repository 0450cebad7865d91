"""Deliberately naive re-statements of the spec (double loops, float64) that the core is checked against."""

from __future__ import annotations

import math

import numpy as np


def future_sum(x, gamma):
    length = len(x)
    return np.array([sum(gamma ** (k - t) * x[k] for k in range(t, length)) for t in range(length)])


def future_values(log_ratio, mask, gamma, eps):
    x = [lr if m else 0.0 for lr, m in zip(log_ratio, mask, strict=True)]
    fv = np.exp(np.clip(future_sum(x, gamma), -20, 20))
    return np.clip(fv, 1 - eps, 1 + eps) if eps and eps > 0 else fv


def zscore(values, mask, eps=1e-6):
    idx = [t for t, m in enumerate(mask) if m]
    out = np.zeros(len(values))
    if idx:
        v = np.array([values[t] for t in idx], float)
        mean = sum(v) / len(v)
        std = math.sqrt(sum((a - mean) ** 2 for a in v) / len(v))
        for t in idx:
            out[t] = (values[t] - mean) / (std + eps)
    return out


def select(score, ez, fz, cand, group_ids, budget):
    """Per group: strict by score desc, fallback by score desc, cyclic repeats (spec §4.3)."""
    result = []
    groups: dict = {}
    for row, g in enumerate(group_ids):
        groups.setdefault(g, []).append(row)
    first = {g: min([r for r in rows if any(cand[r])], default=len(group_ids)) for g, rows in groups.items()}
    for g in sorted(groups, key=lambda g: first[g]):
        pool = [(score[r][t], r, t) for r in sorted(groups[g]) for t in range(len(score[r])) if cand[r][t]]
        if not pool:
            continue
        strict = [c for c in pool if ez[c[1]][c[2]] > 0 and fz[c[1]][c[2]] > 0]
        sel = sorted(strict, key=lambda c: -c[0])[:budget]
        seen = {(c[1], c[2]) for c in sel}
        for c in sorted(pool, key=lambda c: -c[0]):
            if len(sel) >= budget:
                break
            if (c[1], c[2]) not in seen:
                sel.append(c)
                seen.add((c[1], c[2]))
        i = 0
        while len(sel) < budget:
            sel.append(sel[i])
            i += 1
        result += [(r, t, s) for s, r, t in sel]
    return result


def group_stats(values, unbiased):
    mean = sum(values) / len(values)
    dof = len(values) - 1 if unbiased else len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / dof)


def grpo(scores, groups, mask, eps=1e-6, norm=True):
    out = np.zeros(mask.shape)
    for i, s in enumerate(scores):
        members = [scores[j] for j in range(len(scores)) if groups[j] == groups[i]]
        mean, std = (0.0, 1.0) if len(members) == 1 else group_stats(members, unbiased=True)
        base = (s - mean) / (std + eps) if norm else s - mean
        for t in range(mask.shape[1]):
            out[i, t] = base * mask[i, t]
    return out


def appo(scores, groups, is_branch, mask, splits, eps=1e-6, norm=True):
    rows, length = mask.shape
    base = []
    for i, s in enumerate(scores):
        members = [scores[j] for j in range(rows) if groups[j] == groups[i] and is_branch[j] == is_branch[i]]
        mean, std = group_stats(members, unbiased=False)
        base.append((s - mean) / (std + eps) if norm else s - mean)
    out = np.zeros((rows, length))
    for o in range(rows):
        if is_branch[o]:
            continue
        for t in range(length):
            if not mask[o, t]:
                continue
            credit = [base[b] for (oo, b, p) in splits if oo == o and p >= t]
            out[o, t] = base[o] + (sum(credit) / len(credit) if credit else 0.0)
    return out


def agg(loss, mask, mode):
    rows, length = loss.shape
    if mode == "token-mean":
        return sum(loss[i, t] for i in range(rows) for t in range(length) if mask[i, t]) / (mask.sum() + 1e-8)
    seqs = []
    for i in range(rows):
        n = mask[i].sum()
        if n == 0:
            continue
        total = sum(loss[i, t] for t in range(length) if mask[i, t])
        seqs.append(total if mode == "seq-mean-token-sum" else total / n)
    return sum(seqs) / len(seqs) if seqs else 0.0


def dual_clip_token(a_weighted, a_sign, ratio, cl, ch, c):
    """Return (loss, clipped?, dual-clip active?) for one token."""
    l1 = -a_weighted * ratio
    l2 = -a_weighted * min(max(ratio, 1 - cl), 1 + ch)
    c1 = max(l1, l2)
    l3 = -a_weighted * c
    loss = min(l3, c1) if a_weighted < 0 else c1
    return loss, l2 > l1, (c1 > l3) and a_sign < 0


def ppo(new, old, adv, mask, cl=0.2, ch=0.28, c=3.0, mode="token-mean"):
    rows, length = new.shape
    loss = np.zeros((rows, length))
    for i in range(rows):
        for t in range(length):
            r = math.exp(min(max(new[i, t] - old[i, t], -20), 20))
            loss[i, t] = dual_clip_token(adv[i, t], adv[i, t], r, cl, ch, c)[0]
    return agg(loss, mask, mode)


def future_kl(new, old, adv, mask, cl=0.2, ch=0.28, c=3.0, decay=64.0, eps=0.2, high_only=True, b=1.0,
              safety=6.0, mode="token-mean"):
    rows, length = new.shape
    gamma = 2 ** (-1 / decay)
    loss = np.zeros((rows, length))
    keep = np.ones((rows, length))
    for i in range(rows):
        delta = [min(max(new[i, t] - old[i, t], -20), 20) for t in range(length)]
        x = [d if (mask[i, t] and d <= math.log(c)) else 0.0 for t, d in enumerate(delta)]
        fk = future_sum(x, gamma)
        duals = 0
        for t in range(length):
            r = math.exp(delta[t])
            if eps > 0:
                f = min(max(math.exp(fk[t]), 1.0 if high_only else 1 - eps), 1 + eps)
            else:
                f = min(math.exp(fk[t]), 10.0)
            if adv[i, t] < 0 and r > safety:
                f = min(max(f, 0.8), 1.0)
            loss[i, t], _, dual = dual_clip_token(adv[i, t] * (1 + b * f), adv[i, t], r, cl, ch, c)
            duals += bool(dual and mask[i, t])
        if duals > 1:
            keep[i] = 0
    return agg(loss, mask * keep, mode)


def kl(logp, ref, kind):
    d = logp - ref
    if kind in ("kl", "k1"):
        return d
    if kind == "abs":
        return abs(d)
    if kind in ("mse", "k2"):
        return 0.5 * d * d
    kappa = ref - logp
    return min(max(math.exp(kappa) - kappa - 1, -10), 10)
