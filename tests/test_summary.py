"""benchmarks/summary.py: the at-a-glance section of docs/results.md is what the committed result files say."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import summary  # noqa: E402


def test_the_results_page_is_in_step_with_the_result_files():
    """Fails when a table or benchmark was re-run (or the page edited by hand) without ``python benchmarks/summary.py``."""
    assert summary.main(["--check"]) == 0


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results"
    results.mkdir()
    for name in {t.file for t in summary.QUALITY_TABLES} | {run[1] for run in summary.SPEED_RUNS}:
        if (summary.RESULTS / name).is_file():
            shutil.copy(summary.RESULTS / name, results / name)
    page = tmp_path / "results.md"
    shutil.copy(summary.PAGE, page)
    return results, page


def test_a_changed_result_file_makes_the_check_fail_until_rewritten(tmp_path, capsys):
    results, page = _copy(tmp_path)
    assert summary.main(["--check", "--page", str(page), "--results", str(results)]) == 0
    agg_path = results / "quality_scifact_test_epochs-2.0_lr-0.0001_fast_attention_dropout-True.json"
    agg = json.loads(agg_path.read_text())
    row = next(r for r in agg["rows"] if r["row"] == "ours-distill")
    row["summary"]["ndcg@10"].update(mean=0.81234, std=0.00111, n=3)
    agg_path.write_text(json.dumps(agg))
    before = page.read_text()
    assert summary.main(["--check", "--page", str(page), "--results", str(results)]) == 1
    assert "not what the result files say" in capsys.readouterr().err
    assert page.read_text() == before  # --check writes nothing
    assert summary.main(["--page", str(page), "--results", str(results)]) == 0
    text = page.read_text()
    assert "0.8123 ± 0.0011 (3)" in text and "0.7622 ± 0.0037 (3)" not in text
    assert text.split(summary.START)[0] == before.split(summary.START)[0]  # the rest of the page is untouched
    assert text.split(summary.END)[1] == before.split(summary.END)[1]
    assert summary.main(["--check", "--page", str(page), "--results", str(results)]) == 0


def test_cells_and_speed_rows_by_hand(tmp_path):
    trained = {"row": "ours-bm25", "summary": {"ndcg@10": {"mean": 0.75367, "std": 0.00241, "n": 3}}}
    one_seed = {"row": "st-mnrl", "summary": {"ndcg@10": {"mean": 0.7445, "std": None, "n": 1}}}
    untrained = {"row": "bm25", "summary": {"ndcg@10": {"mean": 0.67891, "std": None, "n": 1}}}
    assert [summary.cell(r) for r in (trained, one_seed, untrained)] == ["0.7537 ± 0.0024 (3)", "0.7445 (1)", "0.6789"]
    assert summary.host("Linux-6.18.44-fc-v669-x86_64-with-glibc2.36") == "fc-v669"
    run = {"per_side": {"llm_embedder EmbedderModel (InfoNCE)": {"share_of_gemm_peak": 0.687},
                        "sentence-transformers MNRL": {"share_of_gemm_peak": 0.529}},
           "ratio_ours_over_sentence_transformers": 1.324, "cpu_ratio_ours_over_sentence_transformers": 1.217,
           "rounds": 4, "steps_per_round": 3, "machine": {"platform": "Linux-1-hostx-x86_64"}}
    (tmp_path / "bench_train_s25_run1.json").write_text(json.dumps(run))
    lines = summary.speed_section(tmp_path)  # only the file that exists
    assert lines[2:] == ["| training step | `bench_train_s25_run1.json` | 1.324 (1.217) | 68.7% of the fp32 GEMM "
                         "peak (52.9% theirs), 4 rounds × 3 steps | hostx |"]


def test_a_row_with_no_finished_unit_is_a_dash(tmp_path, monkeypatch):
    """An aggregate lists every row asked for; one whose units were superseded or not yet run has no summary."""
    table = summary.QUALITY_TABLES[0]
    rows = [{"row": "ours-bm25", "label": "BM25 negatives", "summary": {"ndcg@10": {"mean": 0.75, "std": 0.01, "n": 3}}},
            {"row": "ours-3iter", "label": "3 iterations", "summary": {}}]
    (tmp_path / table.file).write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(summary, "QUALITY_TABLES", (table,))
    lines = summary.quality_section(tmp_path, table.dataset)
    assert lines[2:4] == ["| BM25 negatives | 0.7500 ± 0.0100 (3) |", "| 3 iterations | – |"]


def test_a_page_without_markers_is_refused(tmp_path, capsys):
    page = tmp_path / "results.md"
    page.write_text("# Results\n")
    assert summary.main(["--check", "--page", str(page)]) == 2
    assert f"{page}: no <!-- summary:start -->" in capsys.readouterr().err  # names the file given, not the default
