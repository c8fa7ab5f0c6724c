"""benchmarks/quality_records.py: a table's finished units survive the loss of the work folder (a fresh clone)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality  # noqa: E402
import quality_compare as qc  # noqa: E402
import quality_plan as qp  # noqa: E402
import quality_records as rec  # noqa: E402
import quality_rows as qr  # noqa: E402

from llm_embedder.io import write_json  # noqa: E402


def finished(root: Path, row: str, seed: int | None, per_query: dict[str, float] | None, where: str = "") -> Path:
    """A finished unit; its per-query lines in the unit folder, or (3-iteration row) beside its eval file."""
    u = qp.Unit(row, seed)
    folder = u.folder(root)
    lines_dir = folder / where
    lines_dir.mkdir(parents=True, exist_ok=True)
    eval_file = lines_dir / "test.eval.model.json"
    eval_file.write_text("{}")
    if per_query is not None:
        with open(lines_dir / "test.metrics.model.jsonl", "w") as f:
            for qid, v in per_query.items():
                f.write(json.dumps({"query_id": qid, "ndcg@10": v}) + "\n")
    (folder / "model").mkdir()  # work-folder bulk: never published
    (folder / "model" / "weights.bin").write_text("big")
    ndcg = sum(per_query.values()) / len(per_query) if per_query else 0.5
    write_json(u.result_path(root), {"row": row, "seed": seed, "metrics": {"ndcg@10": ndcg},
                                     "eval_file": str(eval_file), "wall_time_s": 60.0, "commands": []})
    return folder


def test_publish_then_restore_into_an_empty_work_folder_gives_the_same_table(tmp_path):
    work, records, fresh = tmp_path / "work", tmp_path / "records", tmp_path / "fresh"
    finished(work, "ours-bm25", 0, {"q1": 1.0, "q2": 0.0, "q3": 0.5})
    finished(work, "ours-bm25", 1, {"q1": 0.5, "q2": 0.0, "q3": 0.5})
    finished(work, "ours-3iter", 0, {"q1": 1.0, "q2": 1.0, "q3": 0.5}, where="3iter/round-3")
    (work / "st-mnrl" / "seed0").mkdir(parents=True)  # interrupted: no result, not published
    published = rec.publish(work, records)
    assert sorted(published) == ["ours-3iter/seed0", "ours-bm25/seed0", "ours-bm25/seed1"]
    assert sorted(p.name for p in (records / "ours-bm25" / "seed0").iterdir()) == ["result.json", "test.metrics.model.jsonl"]
    assert (records / "ours-3iter" / "seed0" / "test.metrics.model.jsonl").is_file()  # lifted from 3iter/round-3
    assert not (records / "st-mnrl").exists() and not list(records.rglob("weights.bin"))
    assert rec.publish(work, records) == []  # nothing changed: nothing copied

    units = [qp.Unit("ours-bm25", 0), qp.Unit("ours-bm25", 1), qp.Unit("ours-3iter", 0)]
    assert qp.pending(units, fresh) == units  # guard: without the records a fresh clone runs everything
    assert sorted(rec.restore(records, fresh)) == ["ours-3iter/seed0", "ours-bm25/seed0", "ours-bm25/seed1"]
    assert qp.pending(units, fresh) == []
    labels = {}
    assert qp.aggregate(fresh, ["ours-bm25", "ours-3iter"], labels)["rows"][0]["summary"] == \
        qp.aggregate(work, ["ours-bm25", "ours-3iter"], labels)["rows"][0]["summary"]
    before, after = qc.compare(work, "ours-3iter", "ours-bm25"), qc.compare(fresh, "ours-3iter", "ours-bm25")
    assert after["queries"] is not None and after["queries"]["mean"] == pytest.approx(before["queries"]["mean"])
    assert after["queries"]["mean"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)  # by hand: per-query lines restored
    assert rec.restore(records, fresh) == []  # already there


def test_publish_updates_a_changed_unit_and_restore_never_overwrites_a_finished_one(tmp_path):
    work, records = tmp_path / "work", tmp_path / "records"
    finished(work, "a", 0, {"q1": 1.0})
    rec.publish(work, records)
    result = qp.Unit("a", 0).result_path(work)
    data = json.loads(result.read_text())
    data["metrics"]["ndcg@10"] = 0.25  # the unit ran again
    write_json(result, data)
    assert rec.publish(work, records) == ["a/seed0"]
    assert json.loads((records / "a" / "seed0" / "result.json").read_text())["metrics"]["ndcg@10"] == 0.25
    data["metrics"]["ndcg@10"] = 0.75  # the work folder's own finished result wins over the record
    write_json(result, data)
    assert rec.restore(records, work) == [] and json.loads(result.read_text())["metrics"]["ndcg@10"] == 0.75
    stale = work / "b" / "seed0"  # an interrupted attempt in the work folder: the record replaces it
    stale.mkdir(parents=True)
    (stale / "result.json").write_text('{"metrics": {"ndcg')
    finished(tmp_path / "other", "b", 0, {"q1": 0.0})
    rec.publish(tmp_path / "other", records)
    assert rec.restore(records, work) == ["b/seed0"] and qp.read_result(stale / "result.json") is not None


def test_import_aggregate_writes_seed_only_records(tmp_path):
    agg = {"dataset": "scifact", "split": "test", "written": "2026-11-30T05:24:38+00:00",
           "recipe": qr.Recipe().with_overrides(["lr=1e-4", "epochs=2"]).__dict__,
           "rows": [{"row": "ours-bm25", "units": [
               {"unit": "seed0", "seed": 0, "metrics": {"ndcg@10": 0.75}, "wall_time_s": 600.0, "commands": ["c0"]},
               {"unit": "seed1", "seed": 1, "metrics": {"ndcg@10": 0.77}, "wall_time_s": 620.0, "commands": ["c1"]}]},
               {"row": "st-mnrl", "units": [{"unit": "seed0", "seed": 0, "metrics": {"ndcg@10": 0.74},
                                             "wall_time_s": 300.0, "commands": []}]}]}
    path = tmp_path / "quality_scifact_test_x.json"
    path.write_text(json.dumps(agg))
    results = tmp_path / "results"
    assert rec.main(["import", str(path), "--results", str(results)]) == 0
    records = rec.records_root(results, "scifact", "test", "epochs=2.0,lr=0.0001")
    seed1 = json.loads((records / "ours-bm25" / "seed1" / "result.json").read_text())
    assert seed1["metrics"] == {"ndcg@10": 0.77} and seed1["commands"] == ["c1"]
    assert seed1["restored_from"] == "quality_scifact_test_x.json (written 2026-11-30T05:24:38+00:00)"
    fresh = tmp_path / "fresh"
    rec.restore(records, fresh)
    assert qp.aggregate(fresh, ["ours-bm25"], {})["rows"][0]["summary"]["ndcg@10"]["mean"] == pytest.approx(0.76)
    c = qc.compare(fresh, "ours-bm25", "st-mnrl")
    assert c["seeds"]["differences"] == pytest.approx([0.01]) and c["queries"] is None  # seed view only
    assert rec.import_aggregate(path, results) == []  # records already there are left alone
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    assert rec.main(["import", str(bad), "--results", str(results)]) == 2


def test_a_fresh_clone_resumes_the_table_from_the_records(tmp_path, monkeypatch):
    """quality.py publishes each finished unit to --results and restores it into an empty --out."""
    calls: list[str] = []

    def runner(ctx, unit, folder, run):
        calls.append(unit.name)
        (folder / "test.metrics.fake.jsonl").write_text(json.dumps({"query_id": "q1", "ndcg@10": 0.5}) + "\n")
        out = folder / "test.eval.fake.json"
        out.write_text(json.dumps({"metrics": {"ndcg@10": 0.5 + 0.01 * unit.seed, "recall@100": 0.9, "mrr@10": 0.4}}))
        return out

    monkeypatch.setattr(quality, "ROWS", {"a": qr.Row("a", "A", True, (), runner)})
    res = tmp_path / "res"
    first = ["--rows", "a", "--seeds", "0", "1", "--out", str(tmp_path / "out1"), "--results", str(res)]
    assert quality.main(first) == 0 and calls == ["a/seed0", "a/seed1"]
    records = res / "quality_units" / "scifact" / "test" / "default" / "a"
    assert sorted(p.name for p in (records / "seed1").iterdir()) == ["result.json", "test.metrics.fake.jsonl"]
    again = ["--rows", "a", "--seeds", "0", "1", "2", "--out", str(tmp_path / "out2"), "--results", str(res)]
    assert quality.main(again) == 0 and calls == ["a/seed0", "a/seed1", "a/seed2"]  # only the new seed runs
    agg = json.loads((res / "quality_scifact.json").read_text())
    assert agg["rows"][0]["n_seeds"] == 3
    assert "restored from" in (tmp_path / "out2" / "log.txt").read_text()


def test_a_reaggregate_keeps_the_per_query_view_of_units_that_lost_their_lines(tmp_path, monkeypatch):
    """Units restored from seed-only records have no per-query lines; the table's next aggregate keeps the
    interval the previous aggregate computed for the same units (marked †), and only for the same units."""
    def runner(ctx, unit, folder, run):
        bump = 0.1 if unit.row == "ours-bm25" else 0.0
        with open(folder / "test.metrics.fake.jsonl", "w") as f:
            for i in range(8):
                f.write(json.dumps({"query_id": f"q{i}", "ndcg@10": (i % 3) / 3 + bump * (i % 2) + 0.01 * unit.seed}) + "\n")
        out = folder / "test.eval.fake.json"
        mean = sum((i % 3) / 3 + bump * (i % 2) + 0.01 * unit.seed for i in range(8)) / 8
        out.write_text(json.dumps({"metrics": {"ndcg@10": mean, "recall@100": 0.9, "mrr@10": 0.4}}))
        return out

    monkeypatch.setattr(quality, "ROWS", {r: qr.Row(r, r, True, (), runner) for r in ("ours-bm25", "st-mnrl")})
    out, res = tmp_path / "out", tmp_path / "res"
    argv = ["--rows", "ours-bm25", "st-mnrl", "--seeds", "0", "1", "--out", str(out), "--results", str(res)]
    assert quality.main(argv) == 0
    first = json.loads((res / "quality_scifact.json").read_text())["comparisons"]
    (view,) = [c["queries"] for c in first]
    assert view["units_a"] == 2 and view["mean"] == pytest.approx(0.05)

    for lines in list(out.rglob("*.metrics.*.jsonl")) + list(res.rglob("*.metrics.*.jsonl")):
        lines.unlink()  # what a restore from seed-only records leaves
    assert qc.comparisons(out / "scifact" / "test" / "default", ["ours-bm25", "st-mnrl"])[0]["queries"] is None
    assert quality.main(argv + ["--aggregate_only"]) == 0
    agg = json.loads((res / "quality_scifact.json").read_text())
    kept = agg["comparisons"][0]["queries"]
    assert {k: v for k, v in kept.items() if k != "carried_from"} == view and kept["carried_from"]
    assert " †" in (res / "quality_scifact.md").read_text()
    assert quality.main(argv + ["--aggregate_only"]) == 0  # kept again, with its first origin
    assert json.loads((res / "quality_scifact.json").read_text())["comparisons"][0]["queries"] == kept

    # guard: other units (a changed per-seed value) are not described by the old interval
    result = out / "scifact" / "test" / "default" / "st-mnrl" / "seed1" / "result.json"
    changed = json.loads(result.read_text())
    changed["metrics"]["ndcg@10"] += 0.02
    result.write_text(json.dumps(changed))
    assert quality.main(argv + ["--aggregate_only"]) == 0
    assert json.loads((res / "quality_scifact.json").read_text())["comparisons"][0]["queries"] is None
    assert qc.carry_query_views(agg["comparisons"], None) == []
