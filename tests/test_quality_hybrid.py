"""benchmarks/quality_hybrid.py: the unit's own evaluation command made hybrid, resume, and the table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import quality_hybrid as qh  # noqa: E402

EVAL = ("python -m evaluation.eval_retrieval --eval_data llm-embedder:scifact/test.json --metrics ndcg recall mrr "
        "--output_dir runs/u --save_name model --retrieval_method dense --query_encoder runs/u/model")


def test_hybrid_command_keeps_the_units_settings_and_changes_only_method_output_and_name(tmp_path):
    argv = qh.hybrid_command(EVAL, tmp_path / "h", "rrf", "/cache")
    assert argv[0] == sys.executable
    flags = {a: b for a, b in zip(argv, argv[1:]) if a.startswith("--")}
    assert flags["--retrieval_method"] == "hybrid" and flags["--output_dir"] == str(tmp_path / "h")
    assert flags["--save_name"] == "hybrid" and flags["--fusion"] == "rrf" and flags["--cache_dir"] == "/cache"
    assert flags["--query_encoder"] == "runs/u/model" and flags["--eval_data"] == "llm-embedder:scifact/test.json"
    with pytest.raises(ValueError, match="not a dense evaluation command"):
        qh.hybrid_command(EVAL.replace("dense", "bm25"), tmp_path, "rrf", None)
    assert qh.eval_command_of({"commands": ["python run_dense.py ...", EVAL]}) == EVAL
    assert qh.eval_command_of({"commands": [EVAL.replace("dense", "bm25")]}) is None


def test_finished_hybrid_units_are_read_back_not_run_and_the_table_averages_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(qh.subprocess, "run", lambda *a, **k: pytest.fail("evaluated again"))
    for seed, (dense, hybrid) in enumerate(((0.60, 0.70), (0.62, 0.74))):
        unit = tmp_path / "table" / "ours" / f"seed{seed}"
        (unit / "hybrid-rrf").mkdir(parents=True)
        metrics = lambda v: {"ndcg@10": v, "recall@100": 0.9, "mrr@10": v - 0.1}  # noqa: E731
        (unit / "result.json").write_text(json.dumps({"seed": seed, "metrics": metrics(dense), "commands": [EVAL]}))
        (unit / "hybrid-rrf" / "hybrid.result.json").write_text(json.dumps(
            {"seed": seed, "metrics": metrics(hybrid), "dense_metrics": metrics(dense)}))
    bm25 = tmp_path / "table" / "bm25" / "once"
    bm25.mkdir(parents=True)
    (bm25 / "result.json").write_text(json.dumps({"metrics": {"ndcg@10": 0.68, "recall@100": 0.9, "mrr@10": 0.6}}))
    out = tmp_path / "res" / "hyb"
    out.parent.mkdir()
    assert qh.main(["--table", str(tmp_path / "table"), "--rows", "ours", "--output", str(out)]) == 0
    data = json.loads(Path(str(out) + ".json").read_text())
    assert data["rows"]["ours"]["hybrid ndcg@10"]["mean"] == pytest.approx(0.72)
    assert data["rows"]["ours"]["dense ndcg@10"]["mean"] == pytest.approx(0.61)
    md = Path(str(out) + ".md").read_text()
    assert "| BM25 alone | – | – | 0.6800 |" in md and "| ours | 2 | 0.6100 ± 0.0141 | 0.7200 ± 0.0283 |" in md


def test_a_missing_table_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        qh.main(["--table", str(tmp_path / "nope"), "--rows", "ours", "--output", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--table:" in err and "is not a folder" in err and not (tmp_path / "o.json").exists()


def test_a_restored_unit_without_its_model_is_skipped_not_a_crash(tmp_path, monkeypatch, capsys):
    """A unit restored from a committed record has its result but not its model: it is left out of the hybrid
    table with a note; a unit whose model is there is evaluated; an alias is never taken for a missing folder."""
    def evaluate(argv, **kwargs):
        raise RuntimeError("would evaluate")

    monkeypatch.setattr(qh.subprocess, "run", evaluate)
    restored = tmp_path / "table" / "ours" / "seed0"
    restored.mkdir(parents=True)
    command = f"python -m evaluation.eval_retrieval --retrieval_method dense --query_encoder {restored / 'model'} --output_dir x"
    assert qh.missing_encoder(command) == str(restored / "model")
    assert qh.run_unit(restored, {"seed": 0, "metrics": {}, "commands": [command]}, "rrf", None) is None
    assert "is not here" in capsys.readouterr().out
    assert qh.missing_encoder(command.replace(str(restored / "model"), "minilm")) is None
    assert qh.missing_encoder(command.replace(str(restored / "model"), "org/hub-model")) is None
    (restored / "model").mkdir()
    assert qh.missing_encoder(command) is None
    with pytest.raises(RuntimeError, match="would evaluate"):  # the model is there: evaluated
        qh.run_unit(restored, {"seed": 0, "metrics": {}, "commands": [command]}, "rrf", None)
