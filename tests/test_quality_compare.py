"""benchmarks/quality_compare.py: paired seed differences with a t-test, and the per-query bootstrap, by hand."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality_compare as qc  # noqa: E402
import quality_plan as qp  # noqa: E402

from llm_embedder.io import write_json  # noqa: E402


def unit(root: Path, row: str, seed: int | None, ndcg: float, per_query: dict[str, float] | None = None) -> None:
    u = qp.Unit(row, seed)
    write_json(u.result_path(root), {"row": row, "seed": seed, "metrics": {"ndcg@10": ndcg}})
    if per_query is not None:
        with open(u.folder(root) / "test.metrics.model.jsonl", "w") as f:
            for qid, v in per_query.items():
                f.write(json.dumps({"query_id": qid, "ndcg@10": v}) + "\n")


def test_seed_differences_and_t_test_by_hand(tmp_path):
    unit(tmp_path, "ours-distill", 0, 0.61)
    unit(tmp_path, "ours-distill", 1, 0.63)
    unit(tmp_path, "ours-distill", 2, 0.70)          # no partner seed in B: left out of the pairs
    unit(tmp_path, "ours-bm25", 0, 0.60)
    unit(tmp_path, "ours-bm25", 1, 0.60)
    c = qc.compare(tmp_path, "ours-distill", "ours-bm25")
    s = c["seeds"]
    assert s["paired_seeds"] == [0, 1] and s["differences"] == pytest.approx([0.01, 0.03])
    assert s["mean"] == pytest.approx(0.02) and s["sd"] == pytest.approx(math.sqrt(2) * 0.01)
    # t = 0.02 / (0.01414 / sqrt 2) = 2 on 1 degree of freedom: p = 1 - 2 atan(2) / pi
    assert s["t_test_p"] == pytest.approx(1 - 2 * math.atan(2) / math.pi, abs=1e-9)
    assert c["queries"] is None                       # restored units: no per-query lines
    assert "no per-query lines" in qc.markdown_comparisons([c])


def test_per_query_view_averages_seeds_and_bootstraps_the_paired_difference(tmp_path):
    unit(tmp_path, "ours-bm25", 0, 0.5, {"q1": 1.0, "q2": 0.0, "q3": 0.5})
    unit(tmp_path, "ours-bm25", 1, 0.5, {"q1": 0.0, "q2": 0.0, "q3": 0.5})
    unit(tmp_path, "st-mnrl", 0, 0.4, {"q1": 0.0, "q2": 0.0, "q3": 0.5, "q4": 1.0})  # q4: only one row has it
    c = qc.compare(tmp_path, "ours-bm25", "st-mnrl")
    q = c["queries"]
    # ours per query (mean over 2 seeds): q1 0.5, q2 0, q3 0.5; st: 0, 0, 0.5 -> differences 0.5, 0, 0
    assert q["queries"] == 3 and q["units_a"] == 2 and q["units_b"] == 1
    assert q["mean"] == pytest.approx(0.5 / 3) and q["wins"] == 1 and q["losses"] == 0
    lo, hi = q["ci95"]
    assert 0.0 <= lo <= q["mean"] <= hi <= 0.5         # resampled means of {0.5, 0, 0} lie in [0, 0.5]
    assert not q["significant"]                       # lo is 0: some resamples draw no 0.5
    assert c["seeds"]["t_test_p"] is None and c["seeds"]["differences"] == pytest.approx([0.1])
    table = qc.markdown_comparisons([c])
    assert "| `ours-bm25` minus `st-mnrl` | 0: +0.1000 | +0.1000 | +0.1667 [" in table and ", 2/1 |" in table


def test_comparisons_skip_rows_not_asked_for_or_not_run(tmp_path):
    unit(tmp_path, "ours-bm25", 0, 0.6)
    unit(tmp_path, "st-mnrl", 0, 0.5)
    unit(tmp_path, "ours-random", 0, 0.55)
    found = qc.comparisons(tmp_path, ["ours-bm25", "st-mnrl", "ours-distill"])
    assert [(c["a"], c["b"]) for c in found] == [("ours-bm25", "st-mnrl")]  # distill not run, random not asked
    assert qc.markdown_comparisons([]) == ""


def test_per_query_lines_beside_the_recorded_evaluation_file(tmp_path):
    """The 3-iteration row evaluates in its unit's 3iter/round-R/ folder: its per-query lines are found through
    the evaluation file its result names; a folder with two candidate files counts as none."""
    unit(tmp_path, "st-mnrl", 0, 0.4, {"q1": 0.0, "q2": 0.5})
    it = qp.Unit("ours-3iter", 0)
    round_dir = it.folder(tmp_path) / "3iter" / "round-3"
    round_dir.mkdir(parents=True)
    (round_dir / "test.metrics.eval.jsonl").write_text(
        "".join(json.dumps({"query_id": q, "ndcg@10": v}) + "\n" for q, v in {"q1": 1.0, "q2": 0.5}.items()))
    write_json(it.result_path(tmp_path), {"row": "ours-3iter", "seed": 0, "metrics": {"ndcg@10": 0.75},
                                          "eval_file": str(round_dir / "test.eval.eval.json")})
    (c,) = [c for c in qc.comparisons(tmp_path, ["st-mnrl", "ours-3iter"]) if c["a"] == "ours-3iter"]
    assert c["b"] == "st-mnrl" and c["queries"]["queries"] == 2 and c["queries"]["mean"] == pytest.approx(0.5)
    for name in ("test.metrics.a.jsonl", "test.metrics.b.jsonl"):
        (it.folder(tmp_path) / name).write_text("")
    assert qc.compare(tmp_path, "ours-3iter", "st-mnrl")["queries"] is None


def test_a_seed_without_spread_has_no_p_value(tmp_path):
    for seed in (0, 1):
        unit(tmp_path, "ours-bm25", seed, 0.6 + seed / 10)
        unit(tmp_path, "st-mnrl", seed, 0.5 + seed / 10)
    s = qc.compare(tmp_path, "ours-bm25", "st-mnrl")["seeds"]
    assert s["differences"] == pytest.approx([0.1, 0.1]) and s["t_test_p"] is None


def test_two_units_of_different_tables_paired_over_their_common_queries(tmp_path, capsys):
    """``python benchmarks/quality_compare.py UNIT_A UNIT_B``: a dev knob against the dev baseline (two tables)."""
    unit(tmp_path / "knob", "ours-bm25", 0, 0.6, {"q1": 1.0, "q2": 0.5, "q3": 0.0})
    unit(tmp_path / "base", "ours-bm25", 1, 0.5, {"q1": 0.5, "q2": 0.5, "q3": 0.0, "q9": 1.0})
    a, b = (tmp_path / t / "ours-bm25" / s for t, s in (("knob", "seed0"), ("base", "seed1")))
    assert qc.main([str(a), str(b)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queries"] == 3 and out["mean"] == pytest.approx(0.5 / 3) and (out["wins"], out["losses"]) == (1, 0)
    unit(tmp_path / "restored", "ours-bm25", 0, 0.6)  # no per-query lines: one line, no traceback
    with pytest.raises(SystemExit):
        qc.main([str(a), str(tmp_path / "restored" / "ours-bm25" / "seed0")])
    assert "not a finished unit with per-query lines" in capsys.readouterr().err.strip().splitlines()[-1]
