"""A small ranker fitted on train targets: how much of the teacher's preference is systematic and learnable.

The split-half test asks whether one target's preference repeats inside that target; a retriever trained by
distillation learns what repeats *across* targets. This module measures that part directly with a linear
model over a handful of features every retriever could see (no target text): the candidate's BM25 and
dense ranks within its pool, how recent it is, whether it defines names the query or context use, its
identifier overlap with them, and how much of it is imports or comments. Ridge regression (scikit-learn)
predicts each candidate's teacher score, standardised within its target; the top prediction is the pick.

Two uses: ``cross_fitted_rankings`` (reliability table; folds by source file, fitted on first-half scores,
so the held-out pick is later scored on second halves it never saw) and ``fit`` + ``rank`` (study table;
fitted on the train file's teacher scores, applied to test files).
"""
from __future__ import annotations

import keyword
import re
from typing import Sequence

import numpy as np

from ..errors import UserError

FEATURES = ("bm25_rank", "dense_rank", "recency_rank", "log_defs", "log_defines_used", "identifier_overlap",
            "import_lines", "comment_lines")
RANK_SOURCES = ("bm25", "dense")  # the rankings the features need, by role
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DEF = re.compile(r"^\s*(?:async\s+def|def|class)\s+([A-Za-z_]\w*)", re.M)


def _identifiers(text: str) -> set[str]:
    """Names in ``text``, Python keywords left out (every chunk has ``def`` and ``return``)."""
    return {w for w in _IDENT.findall(text) if not keyword.iskeyword(w)}


def _rank_fraction(ranking: Sequence[int], n: int) -> np.ndarray:
    """Position of each candidate in ``ranking`` scaled to [0, 1] (0 = first)."""
    out = np.zeros(n)
    for pos, j in enumerate(ranking):
        out[j] = pos / max(n - 1, 1)
    return out


def _line_share(text: str, pattern: re.Pattern) -> float:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return sum(bool(pattern.match(ln)) for ln in lines) / max(len(lines), 1)


_IMPORT = re.compile(r"\s*(?:import|from)\s+\w")
_COMMENT = re.compile(r"\s*(?:#|\"\"\"|''')")


def features(record: dict, bm25: Sequence[int], dense: Sequence[int]) -> np.ndarray:
    """``[n_keys, len(FEATURES)]`` for one record, given its BM25 and dense rankings (best first)."""
    keys = record["neg"]
    n = len(keys)
    seen = _identifiers(record["query"] + "\n" + record.get("context", ""))
    starts = [span[0] for span in record["key_spans"]]
    recency = sorted(range(n), key=lambda j: -starts[j])  # latest in the file first
    rows = []
    for text in keys:
        names = _DEF.findall(text)
        idents = _identifiers(text)
        rows.append([0.0, 0.0, 0.0, np.log1p(len(names)), np.log1p(sum(name in seen for name in names)),
                     len(idents & seen) / max(len(idents), 1), _line_share(text, _IMPORT), _line_share(text, _COMMENT)])
    x = np.asarray(rows, dtype=float)
    x[:, 0], x[:, 1], x[:, 2] = _rank_fraction(bm25, n), _rank_fraction(dense, n), _rank_fraction(recency, n)
    return x


def _design(records: Sequence[dict], ranks: dict[str, list[list[int]]]) -> list[np.ndarray]:
    missing = [name for name in RANK_SOURCES if name not in ranks]
    if missing:
        raise UserError(f"the fitted ranker needs the {', '.join(missing)} rankings of the same records")
    return [features(r, ranks["bm25"][i], ranks["dense"][i]) for i, r in enumerate(records)]


def _standardised(scores: Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    return (s - s.mean()) / (s.std() or 1.0)


def fit(records: Sequence[dict], ranks: dict[str, list[list[int]]], scores: Sequence[Sequence[float]]):
    """A scaler + ridge pipeline predicting each candidate's within-target standardised ``scores``."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(records) < 2:
        raise UserError(f"the fitted ranker needs at least 2 train targets, got {len(records)}")
    x = np.concatenate(_design(records, ranks))
    y = np.concatenate([_standardised(s) for s in scores])
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12))).fit(x, y)


def rank(model, records: Sequence[dict], ranks: dict[str, list[list[int]]]) -> list[list[int]]:
    """Each record's candidates by the model's predicted score, best first (ties: lower index)."""
    out = []
    for x in _design(records, ranks):
        pred = model.predict(x)
        out.append(sorted(range(len(pred)), key=lambda j: (-pred[j], j)))
    return out


def coefficients(model) -> dict[str, float]:
    """Standardised weights per feature (how the model ranks), for the report."""
    return {name: float(w) for name, w in zip(FEATURES, model[-1].coef_)}


def cross_fitted_rankings(records: Sequence[dict], ranks: dict[str, list[list[int]]],
                          scores: Sequence[Sequence[float]], folds: int = 5) -> list[list[int]]:
    """Rankings of every record by a model fitted on the OTHER source files' records (GroupKFold by file)."""
    from sklearn.model_selection import GroupKFold

    groups = [r.get("source", r["query_id"]) for r in records]
    folds = min(folds, len(set(groups)))
    if folds < 2:
        raise UserError("the cross-fitted ranker needs targets from at least 2 source files")
    out: list[list[int] | None] = [None] * len(records)
    for train_idx, held_idx in GroupKFold(n_splits=folds).split(np.zeros(len(records)), groups=groups):
        sub = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
        model = fit(sub(train_idx, records), {k: sub(train_idx, v) for k, v in ranks.items()}, sub(train_idx, scores))
        picked = rank(model, sub(held_idx, records), {k: sub(held_idx, v) for k, v in ranks.items()})
        for i, ranking in zip(held_idx, picked):
            out[i] = ranking
    return out  # type: ignore[return-value]


__all__ = ["FEATURES", "features", "fit", "rank", "coefficients", "cross_fitted_rankings"]
