"""Perplexity summaries, bootstrap intervals and the teacher-reliability measures of the lrlm study.

All values are per target: NLL = minus the mean log-probability per target token (every target has the same
number of tokens, so the mean over targets is the mean per token); perplexity = exp(mean NLL).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..stats import bootstrap_ci


def summarise(nll: Sequence[float], seed: int = 0) -> dict:
    m = float(np.mean(nll))
    lo, hi = bootstrap_ci(nll, seed)
    return {"targets": len(nll), "mean_nll": m, "ppl": math.exp(m), "nll_ci95": [lo, hi], "ppl_ci95": [math.exp(lo), math.exp(hi)]}


def targets_needed(differences: Sequence[float]) -> int | None:
    """How many targets a 95% interval (normal approximation, 1.96 standard errors) would need to exclude zero
    if the per-target differences kept this mean and spread: ceil((1.96 sd / mean)^2). None without a mean
    difference or a spread. It sizes the next run; it is not a test."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2 or d.mean() == 0 or d.std(ddof=1) == 0:
        return None
    return int(math.ceil((1.96 * d.std(ddof=1) / d.mean()) ** 2))


def paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict:
    """NLL(b) - NLL(a) per target (positive: a is better), with its mean, paired 95% bootstrap interval and the
    number of targets that would make the same mean significant (:func:`targets_needed`)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    lo, hi = bootstrap_ci(d, seed)
    return {"mean_gain_nats": float(d.mean()), "ci95": [lo, hi], "significant": bool(lo > 0 or hi < 0),
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "targets": int(len(d)),
            "targets_needed": targets_needed(d)}


def summarise_targets(rows: Sequence[dict], seed: int = 0) -> dict:
    """A row of the eval_lm summary from its per-target lines: the NLL summary, plus, where the lines carry
    them, accuracy (``correct``) with its bootstrap interval, the mean summed NLL with the token-weighted
    perplexity (``nll_sum``, ``answer_tokens``) and the rate at which the gold key was retrieved."""
    out = summarise([t["nll"] for t in rows], seed)
    if rows and "correct" in rows[0]:
        acc = [float(t["correct"]) for t in rows]
        out.update(accuracy=float(np.mean(acc)), accuracy_ci95=list(bootstrap_ci(acc, seed)))
    if rows and "nll_sum" in rows[0]:
        tokens = sum(sum(t["answer_tokens"]) / len(t["answer_tokens"]) for t in rows)
        out.update(mean_nll_sum=float(np.mean([t["nll_sum"] for t in rows])),
                   token_weighted_ppl=math.exp(sum(t["nll_sum"] for t in rows) / tokens))
    if rows and "gold_retrieved" in rows[0]:
        out["gold_retrieved"] = float(np.mean([t["gold_retrieved"] for t in rows]))
    return out


def compare_targets(a: Sequence[dict], b: Sequence[dict], seed: int = 0) -> dict:
    """Paired comparison of two rows' per-target lines (same targets, same order): :func:`paired` on the NLL,
    and, where the lines carry ``correct``, on the errors (``accuracy.mean_gain`` = accuracy(a) - accuracy(b))."""
    ids_a, ids_b = [t["query_id"] for t in a], [t["query_id"] for t in b]
    if ids_a != ids_b:
        raise ValueError("the two rows cover different targets")
    out = paired([t["nll"] for t in a], [t["nll"] for t in b], seed)
    if a and "correct" in a[0]:
        acc = paired([1.0 - t["correct"] for t in a], [1.0 - t["correct"] for t in b], seed)
        out["accuracy"] = {"mean_gain": acc.pop("mean_gain_nats"), **acc}
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return 0.0
    return float(spearmanr(x, y).statistic)


def halves(n_tokens: int) -> tuple[slice, slice]:
    h = n_tokens // 2
    return slice(0, h), slice(h, n_tokens)


def nll_of(logprobs: Sequence[float], part: slice = slice(None)) -> float:
    return -float(np.mean(logprobs[part]))


def reliability(records: Sequence[dict], baselines: dict[str, list[list[int]]], seed: int = 0,
                fitted: Callable[[list[list[float]]], list[list[int]]] | None = None) -> dict:
    """Split-half reliability of the teacher's candidate preference on scored records.

    Each target's tokens are cut into halves. Per target: Spearman between the candidates' first-half and
    second-half scores; the cross-fitted oracle picks the best candidate on the FIRST half and is scored on
    the SECOND; every other row (baselines given as rankings, the privileged key, the in-sample oracle) is
    scored on the second half too, so all rows are comparable. Returns rows, the Spearman mean and the
    privileged key's top-1 rate and mean rank (full-target scores). ``fitted`` (optional) maps every target's
    first-half candidate scores to rankings made without the target itself (a model cross-fitted on other
    files, :mod:`.fitted`): its pick is the ``fitted_model`` row, the systematic part of the preference.
    """
    rows: dict[str, list[float]] = {"none": []}
    rows.update({name: [] for name in baselines})
    rows.update({"cross_fitted_oracle": [], "in_sample_oracle": []})
    has_priv = all(r.get("privileged_key") is not None for r in records)
    if has_priv:
        rows["privileged"] = []
    rhos, priv_top1, priv_rank = [], [], []
    firsts, seconds = [], []
    for r in records:
        first, second = halves(len(r["answer_ids"]))
        firsts.append([-nll_of(lp, first) for lp in r["key_token_logprobs"]])
        seconds.append([-nll_of(lp, second) for lp in r["key_token_logprobs"]])
        rows["none"].append(nll_of(r["none_token_logprobs"], second))
    fitted_ranks = fitted(firsts) if fitted is not None else None
    if fitted_ranks is not None:
        rows["fitted_model"] = [-s2[ranking[0]] for s2, ranking in zip(seconds, fitted_ranks)]
    for i, r in enumerate(records):
        s1, s2 = firsts[i], seconds[i]
        rhos.append(spearman(s1, s2))
        for name, ranking in baselines.items():
            rows[name].append(-s2[ranking[i][0]])
        rows["cross_fitted_oracle"].append(-s2[int(np.argmax(s1))])
        rows["in_sample_oracle"].append(-max(s2))
        if has_priv:
            p = r["privileged_key"]
            rows["privileged"].append(-s2[p])
            full = r["teacher_scores"]
            order = sorted(range(len(full)), key=lambda j: (-full[j], j))
            priv_rank.append(order.index(p) + 1)
            priv_top1.append(order[0] == p)
    out = {"targets": len(records), "spearman_split_half": float(np.mean(rhos)),
           "rows_second_half": {name: summarise(v, seed) for name, v in rows.items()}}
    best = min(baselines, key=lambda n: np.mean(rows[n])) if baselines else "none"
    out["best_baseline"] = best
    out["cross_fitted_vs_best"] = paired(rows["cross_fitted_oracle"], rows[best], seed)
    if fitted_ranks is not None:
        out["fitted_vs_best"] = paired(rows["fitted_model"], rows[best], seed)
    if has_priv:
        n_keys = float(np.mean([len(r["key_ids"]) for r in records]))
        out["privileged_top1_rate"] = float(np.mean(priv_top1))
        out["privileged_mean_rank"] = float(np.mean(priv_rank))
        out["chance_top1"] = 1.0 / n_keys
        out["privileged_vs_best"] = paired(rows["privileged"], rows[best], seed)
    out["per_target"] = {name: v for name, v in rows.items()}
    return out
