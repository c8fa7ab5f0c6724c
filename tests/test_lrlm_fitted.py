"""The feature ranker fitted on train targets (lrlm.fitted): features by hand, a planted rule is learned and
used on unseen files, cross-fitting never fits on the held-out file, and the reliability row it feeds."""
from __future__ import annotations

import random

import numpy as np
import pytest

from llm_embedder.lrlm import fitted, metrics


def test_features_by_hand():
    record = {"query": "x = parse(value)", "context": "import os\nresult = Widget()",
              "neg": ["def parse(text):\n    return text", "import sys\nimport os", "# a note\nclass Widget:\n    pass"],
              "key_spans": [[100, 110], [0, 10], [50, 60]]}
    x = fitted.features(record, bm25=[2, 0, 1], dense=[0, 2, 1])
    col = {name: x[:, i] for i, name in enumerate(fitted.FEATURES)}
    assert col["bm25_rank"].tolist() == [0.5, 1.0, 0.0]  # rankings list key indices best first
    assert col["dense_rank"].tolist() == [0.0, 1.0, 0.5]
    assert col["recency_rank"].tolist() == [0.0, 1.0, 0.5]  # the key starting latest in the file is first
    assert col["log_defs"].tolist() == pytest.approx([np.log(2), 0.0, np.log(2)])
    assert col["log_defines_used"].tolist() == pytest.approx([np.log(2), 0.0, np.log(2)])  # parse, Widget are used
    # keywords left out: {parse} of {parse, text}; {os} of {sys, os}; {Widget} of {a, note, Widget}
    assert col["identifier_overlap"].tolist() == pytest.approx([1 / 2, 1 / 2, 1 / 3])
    assert col["import_lines"].tolist() == [0.0, 1.0, 0.0]
    assert col["comment_lines"].tolist() == pytest.approx([0.0, 0.0, 1 / 3])


def _records(n: int, files: int, planted: float, seed: int = 0) -> tuple[list[dict], list[list[float]]]:
    """Records with 6 candidates; one defines the name the query calls; the teacher adds ``planted`` to its score."""
    rng = random.Random(seed)
    records, scores = [], []
    for i in range(n):
        name = f"fn_{i}"
        keys = [f"value_{i}_{j} = compute({j})\nother_{j} += 1" for j in range(6)]
        good = rng.randrange(6)
        keys[good] = f"def {name}(arg):\n    return arg"
        records.append({"query_id": f"f{i % files}:{i}", "source": f"f{i % files}.py", "query": f"y = {name}(z)",
                        "context": "", "neg": keys, "key_spans": [[10 * j, 10 * j + 9] for j in range(6)]})
        s = [rng.gauss(0, 0.3) for _ in range(6)]
        s[good] += planted
        scores.append(s)
    return records, scores


def _ranks(records, seed=1):
    rng = random.Random(seed)
    shuffled = lambda: rng.sample(range(6), 6)  # noqa: E731  (uninformative bm25 / dense ranks)
    return {"bm25": [shuffled() for _ in records], "dense": [shuffled() for _ in records]}


def _hit_rate(records, ranking):
    return np.mean(["def " in r["neg"][order[0]] for r, order in zip(records, ranking)])


@pytest.mark.parametrize("planted", [2.0, -2.0])
def test_a_planted_rule_is_learned_and_used_on_unseen_files(planted):
    train, scores = _records(60, files=6, planted=planted)
    test, _ = _records(40, files=4, planted=planted, seed=7)
    for r in test:
        r["source"] = "test_" + r["source"]
    model = fitted.fit(train, _ranks(train), scores)
    hit = _hit_rate(test, fitted.rank(model, test, _ranks(test, seed=2)))
    coef = fitted.coefficients(model)
    assert max(coef, key=lambda k: abs(coef[k])) in ("log_defs", "log_defines_used", "identifier_overlap", "comment_lines")
    # guard: the pick follows the sign of the teacher's preference, not the features alone
    assert hit == (1.0 if planted > 0 else 0.0)


def test_cross_fitting_never_fits_on_the_held_out_file(monkeypatch):
    records, scores = _records(50, files=5, planted=2.0)
    fits, ranked = [], []
    real_fit, real_rank = fitted.fit, fitted.rank
    monkeypatch.setattr(fitted, "fit", lambda rs, ranks, s: fits.append({r["source"] for r in rs}) or real_fit(rs, ranks, s))
    monkeypatch.setattr(fitted, "rank", lambda m, rs, ranks: ranked.append({r["source"] for r in rs}) or real_rank(m, rs, ranks))
    out = fitted.cross_fitted_rankings(records, _ranks(records), scores, folds=5)
    assert len(fits) == 5 and all(not (f & h) for f, h in zip(fits, ranked))
    assert set().union(*ranked) == {r["source"] for r in records}
    assert _hit_rate(records, out) == 1.0


def test_reliability_fitted_row_is_the_second_half_score_of_a_pick_made_from_first_halves():
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        keys = (-rng.random((4, 8)) * 3).tolist()
        records.append({"query_id": i, "answer_ids": list(range(8)), "key_token_logprobs": keys,
                        "none_token_logprobs": [-3.0] * 8, "teacher_scores": [sum(k) / 8 for k in keys]})
    seen = []

    def pick_worst_first_half(firsts):
        seen.append(firsts)
        return [sorted(range(4), key=lambda j: s[j]) for s in firsts]

    out = metrics.reliability(records, {}, fitted=pick_worst_first_half)
    firsts = [[float(np.mean(k[:4])) for k in r["key_token_logprobs"]] for r in records]
    assert np.allclose(seen[0], firsts)  # the ranker is given first halves only
    expected = [-float(np.mean(r["key_token_logprobs"][int(np.argmin(f))][4:])) for r, f in zip(records, firsts)]
    assert out["per_target"]["fitted_model"] == pytest.approx(expected)
    assert "fitted_vs_best" in out and "fitted_model" not in metrics.reliability(records, {})["per_target"]
