"""The 3-iteration mine -> score -> train loop (scripts/lib/3iter.sh) on a small converted set, tiny models."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from test_lm_fixtures import build_tiny_lm



def head(src, dst, n):
    lines = src.read_text().splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_three_iteration_script_runs_on_any_schema_data(repo_root, data_dir, tiny_bert_dir, tmp_path):
    head(data_dir / "pubmedqa" / "train.json", tmp_path / "train.json", 12)
    rows = [json.loads(line) for line in (tmp_path / "train.json").read_text().splitlines()]
    rows[0]["pos_index"].append(rows[1]["pos_index"][0])  # two positives with N_KEYS=2: MAX_POS keeps a negative
    rows[0].pop("pos_ids", None)
    (tmp_path / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head(data_dir / "pubmedqa" / "test.json", tmp_path / "test.json", 8)
    lm = build_tiny_lm(tmp_path / "tiny_lm")
    out = tmp_path / "out"
    env = dict(os.environ, ROUNDS="2", N_QUERIES="8", N_KEYS="2", MODEL=str(tiny_bert_dir), LM=str(lm),
               BM25_BACKEND="bm25s", EPOCHS="1", BATCH="4", OUT=str(out), TORCH_THREADS="1", SCORE_PROCESSES="2",
               EXTRA_TRAIN_ARGS="--query_max_length 32 --key_max_length 64 --disable_tqdm True",
               EXTRA_EVAL_ARGS="--key_max_length 64")
    command = ["bash", "scripts/3iter-msmarco.sh", str(tmp_path / "train.json"), str(tmp_path / "test.json"),
               str(data_dir / "pubmedqa" / "corpus.jsonl")]
    proc = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "reusing" not in proc.stdout
    table = (out / "results.md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:5]] == ["0", "1", "2"]
    assert "bm25" in table[3] and "dense (round 1)" in table[4]
    scored = [json.loads(l) for l in (out / "round-2" / "train.neg.dense.scored.lm.json").read_text().splitlines()]
    assert len(scored) == 8 and all(len(r["teacher_scores"]) == 2 and len(r["pos_index"]) == 1 == len(r["neg_index"])
                                    for r in scored)
    mined = [json.loads(l) for l in (out / "round-1" / "train.neg.bm25.json").read_text().splitlines()]
    assert all(not set(r["neg_index"]) & set(r["pos_index"]) for r in mined)
    for r, tag in (("1", "bm25"), ("2", "dense")):  # SCORE_PROCESSES=2: every scoring step ran on two ranks
        assert json.loads((out / f"round-{r}" / f"train.neg.{tag}.scored.lm.meta.json").read_text())["world_size"] == 2
    assert (out / "round-2" / "model" / "model.safetensors").is_file()
    # every round shuffles with its own data seed (SEED 42 by default: 42, 43), or a round of less than an
    # epoch would train on the same queries as the round before it
    data_seeds = [json.loads((out / f"round-{r}" / "model" / "training_args.json").read_text())["data_seed"]
                  for r in (1, 2)]
    assert data_seeds == [42, 43]
    timings = [line.split("\t")[:2] for line in (out / "timings.tsv").read_text().splitlines()]
    assert timings == [["0", "evaluate"]] + [[r, s] for r in "12" for s in ("mine", "score", "train", "evaluate")]

    # A second run with the same OUT reuses every finished step (1 eval + 2 rounds x 4 steps) and rebuilds the
    # same table; removing one round's model marker retrains that round and redoes what follows it.
    model_file = out / "round-2" / "model" / "model.safetensors"
    trained_at = model_file.stat().st_mtime_ns
    rerun = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
    assert rerun.stdout.count("reusing") == 9
    again = (out / "results.md").read_text().splitlines()
    assert [row.split("|")[3] for row in again[2:5]] == [row.split("|")[3] for row in table[2:5]]
    assert [row.split("|")[6] for row in again[2:5]] == [row.split("|")[6] for row in table[2:5]]  # minutes of all runs
    assert len((out / "timings.tsv").read_text().splitlines()) == 9  # reused steps are not timed again
    assert "9 steps reused" in again[-1]
    assert model_file.stat().st_mtime_ns == trained_at

    (out / "round-2" / "model" / ".complete").unlink()
    round1_model = out / "round-1" / "model" / "model.safetensors"
    round1_at = round1_model.stat().st_mtime_ns
    third = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-4000:]
    # round 2 retrains, and its evaluation (of the old model) is redone; everything before is reused
    assert third.stdout.count("reusing") == 7 and model_file.stat().st_mtime_ns != trained_at
    assert round1_model.stat().st_mtime_ns == round1_at
    lines = [line.split("\t")[:2] for line in (out / "timings.tsv").read_text().splitlines()]
    assert len(lines) == 11 and lines[-2:] == [["2", "train"], ["2", "evaluate"]]


@pytest.mark.parametrize("setting, message", [
    ("SCORE_PROCESSES=two", "SCORE_PROCESSES=two: expected a positive whole number"),
    ("ROUNDS=-1", "ROUNDS=-1: expected a positive whole number"),
    ("EPOCHS=0", "EPOCHS=0: expected a positive number"),
    ("N_KEYS=1", "N_KEYS=1: needs at least 2"),
    ("SEED=-3", "SEED=-3: expected a whole number"),
])
def test_three_iterations_refuses_a_bad_size_before_any_work(repo_root, tmp_path, setting, message):
    name, value = setting.split("=")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), **{name: value})
    proc = subprocess.run(["bash", "-c", 'source scripts/lib/3iter.sh; three_iterations toy t.json d.json c.jsonl'],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"3iter.sh: {message}" + (
        " (the positive and a negative)" if name == "N_KEYS" else "")]
    assert not out.exists()  # nothing started
