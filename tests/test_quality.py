"""benchmarks/quality.py: unit order, resume, aggregate, argument errors, split, and the peer row's examples.

Fast tests use fake rows (a runner that writes an evaluation file) instead of training; one slow test runs the
real script on a tiny subset (4 training queries, 2 dev queries against 10 other corpus rows).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import quality  # noqa: E402
import quality_inputs as qi  # noqa: E402
import quality_plan as qp  # noqa: E402
import quality_rows as qr  # noqa: E402
from quality_st import examples  # noqa: E402

TRAINED = {"base": False, "bm25": False, "a": True, "b": True}


def test_plan_seed_order_fills_the_first_column_first():
    units = qp.plan(["base", "a", "bm25", "b"], [0, 1], TRAINED, "seed")
    assert [u.name for u in units] == ["base/once", "a/seed0", "bm25/once", "b/seed0", "a/seed1", "b/seed1"]


def test_plan_row_order_runs_every_seed_of_a_row_first():
    units = qp.plan(["base", "a", "b"], [2, 5], TRAINED, "row")
    assert [u.name for u in units] == ["base/once", "a/seed2", "a/seed5", "b/seed2", "b/seed5"]


@pytest.mark.parametrize("seeds, order, message", [([], "seed", "--seeds"), ([0, 0], "seed", "repeated"),
                                                   ([0], "diagonal", "--seed_order")])
def test_plan_refuses_bad_seeds_and_orders(seeds, order, message):
    with pytest.raises(ValueError, match=message):
        qp.plan(["a"], seeds, TRAINED, order)


def write_result(root: Path, unit: qp.Unit, ndcg: float, wall: float = 60.0) -> None:
    from llm_embedder.io import write_json
    write_json(unit.result_path(root), {"row": unit.row, "seed": unit.seed, "wall_time_s": wall, "commands": ["x"],
                                        "metrics": {"ndcg@10": ndcg, "recall@100": ndcg + 0.2, "mrr@10": ndcg - 0.1}})


def test_pending_skips_finished_units_and_reruns_half_written_ones(tmp_path):
    units = qp.plan(["base", "a"], [0, 1, 2], TRAINED)
    write_result(tmp_path, units[0], 0.6)           # base/once finished
    write_result(tmp_path, units[1], 0.7)           # a/seed0 finished
    half = units[2].result_path(tmp_path)           # a/seed1: model saved, result cut off mid-write
    half.parent.mkdir(parents=True)
    (half.parent / "model").mkdir()
    half.write_text('{"metrics": {"ndcg@10": 0.7')
    no_metrics = units[3].result_path(tmp_path)     # a/seed2: a file without metrics is not a result either
    no_metrics.parent.mkdir(parents=True)
    no_metrics.write_text('{"row": "a"}')
    assert [u.name for u in qp.pending(units, tmp_path)] == ["a/seed1", "a/seed2"]


def test_aggregate_mean_and_std_come_from_the_per_seed_files(tmp_path):
    for seed, value in zip([0, 1, 2], [0.60, 0.66, 0.69]):
        write_result(tmp_path, qp.Unit("a", seed), value, wall=60.0 * (seed + 1))
    write_result(tmp_path, qp.Unit("base", None), 0.5)
    (tmp_path / "a" / "seed3").mkdir()  # an unfinished unit: not counted
    agg = qp.aggregate(tmp_path, ["base", "a", "b"], {"a": "row A"})
    base, a, b = agg["rows"]
    assert a["label"] == "row A" and a["n_seeds"] == 3 and [u["seed"] for u in a["units"]] == [0, 1, 2]
    assert a["summary"]["ndcg@10"]["mean"] == pytest.approx((0.60 + 0.66 + 0.69) / 3)
    assert a["summary"]["ndcg@10"]["std"] == pytest.approx(statistics.stdev([0.60, 0.66, 0.69]))
    assert a["summary"]["ndcg@10"]["std"] == pytest.approx(0.045825757, abs=1e-8)  # by hand: sample std (n-1)
    assert base["summary"]["ndcg@10"] == {"mean": 0.5, "std": None, "n": 1}
    assert b["n_seeds"] == 0 and b["summary"] == {}
    table = qp.markdown_table(agg)
    assert "| row A | 0.6500 ± 0.0458 |" in table and "| 3 | 0: 1.0, 1: 2.0, 2: 3.0 |" in table
    assert "| b | not run | not run | not run | 0 | - |" in table
    assert "| base | 0.5000 | 0.7000 | 0.4000 | n/a |" in table


@pytest.mark.parametrize("argv, message", [
    (["--rows", "nope"], "unknown row 'nope'"),
    (["--rows", "base", "base"], "listed twice"),
    (["--set", "tau=0.1"], "--set: 'tau=0.1' is not NAME=VALUE"),
    (["--set", "epochs=many"], "--set: epochs='many' is not a float"),
    (["--set", "group_size=5"], "--score_keys 4 must be >= group_size 5"),
    (["--set", "group_size=4", "--neg_depth", "2"], "--neg_depth 2: needs at least group_size - 1 = 3"),
    (["--stop_after", "ten"], "--stop_after: 'ten' is not HH:MM"),
    (["--seed_order", "diagonal"], "--seed_order"),
    (["--score_processes", "0"], "--score_processes: 0 must be at least 1"),
])
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python benchmarks/quality.py: error:")


def test_recipe_overrides_and_tag():
    recipe = qr.Recipe().with_overrides(["temperature=0.02", "instruction=true", "epochs=2"])
    assert (recipe.temperature, recipe.instruction, recipe.epochs) == (0.02, True, 2.0)
    assert recipe.tag() == "epochs=2.0,temperature=0.02,instruction=True"
    assert qr.Recipe().tag() == "default"


@pytest.mark.parametrize("fast", [False, True])
def test_ours_pins_the_attention_dropout_of_the_recipe(tmp_path, fast):
    """The table's units all ran with PyTorch's attention dropout; run_dense.py's default is now ours, so the
    recipe pins it in every command (and the other choice is another recipe, in its own folder)."""
    recipe = qr.Recipe().with_overrides([f"fast_attention_dropout={fast}"])
    assert recipe.tag() == ("fast_attention_dropout=True" if fast else "default")
    ctx = qr.Context("scifact", qr.DATASETS["scifact"], recipe, "t", None, None, "llm-embedder:scifact/test.json", n_train=4)
    cmd = qr.run_dense_cmd(ctx, tmp_path, 0, ["t"], 2)
    assert cmd[cmd.index("--fast_attention_dropout") + 1] == str(fast).lower()


@pytest.mark.parametrize("fast", [False, True])
def test_three_iteration_row_trains_with_the_recipe(tmp_path, monkeypatch, fast):
    """The 3-iteration row passes the recipe to every round's run_dense.py through EXTRA_TRAIN_ARGS, the
    attention dropout included (3iter.sh does not set it, so run_dense.py's default would win otherwise)."""
    monkeypatch.setattr(qr, "check_setup_is_noop", lambda: None)
    recipe = qr.Recipe().with_overrides([f"fast_attention_dropout={fast}", "lr=1e-4"])
    ctx = qr.Context("scifact", qr.DATASETS["scifact"], recipe, "t", None, None, "llm-embedder:scifact/test.json", n_train=4)
    calls = []
    qr._three_iterations(ctx, qp.Unit("ours-3iter", 3), tmp_path, lambda cmd, env=None: calls.append(env))
    (env,) = calls
    extra = env["EXTRA_TRAIN_ARGS"].split()
    assert extra[extra.index("--fast_attention_dropout") + 1] == str(fast).lower()
    assert env["SEED"] == "3" and "--seed" not in extra  # 3iter.sh: --seed 3, round R shuffles with 3 + R - 1
    assert env["LR"] == "0.0001" and env["N_KEYS"] == "2"
    assert env["EPOCHS"] == str(1 / 3) and env["ROUNDS"] == "3"  # the recipe's one epoch, shared among 3 rounds
    assert env["SCORE_PROCESSES"] == "1"
    epochs3 = dataclasses.replace(ctx, recipe=recipe.with_overrides(["epochs=3"]))
    qr._three_iterations(epochs3, qp.Unit("ours-3iter", 3), tmp_path, lambda cmd, env=None: calls.append(env))
    assert calls[-1]["EPOCHS"] == "1.0"  # what the session-23 unit ran per round
    qr._three_iterations(dataclasses.replace(ctx, score_processes=2), qp.Unit("ours-3iter", 3), tmp_path,
                         lambda cmd, env=None: calls.append(env))
    assert calls[-1]["SCORE_PROCESSES"] == "2"  # --score_processes reaches 3iter.sh's scoring steps


def _finished_rounds(seed_dir: Path, rows: int = 4, max_neg: int = 1, key_max_length: int = 256,
                     template: str = "query_likelihood") -> None:
    """Fake what 3iter.sh leaves after round 1 of one unit: round 0's evaluation, round 1's mining, scoring
    (plus a stale partial), model and evaluation."""
    r0, r1 = seed_dir / "3iter" / "round-0", seed_dir / "3iter" / "round-1"
    for d in (r0, r1 / "model", r1 / "train.neg.bm25.scored.lm.json.partial"):
        d.mkdir(parents=True)
    (r0 / "test.eval.eval.json").write_text(json.dumps(
        {"args": {"query_encoder": "minilm", "query_max_length": 64, "key_max_length": key_max_length}}))
    (r0 / "test.run.eval.trec").write_text("run")
    for name in ("train.neg.bm25.json", "train.run.bm25.trec", "train.neg.bm25.scored.lm.json",
                 "test.eval.eval.json"):
        (r1 / name).write_text(f"{seed_dir.name} {name}")
    (r1 / "train.neg.bm25.meta.json").write_text(json.dumps({"counts": {"rows": rows}, "retrieval": {"max_neg_num": max_neg}}))
    (r1 / "train.neg.bm25.scored.lm.meta.json").write_text(json.dumps({"template_argument": template, "max_keys": max_neg + 1}))


def _iter_ctx(**recipe):
    return qr.Context("scifact", qr.DATASETS["scifact"], dataclasses.replace(qr.Recipe(), **recipe),
                      "llm-embedder:scifact/train.json", None, None, "llm-embedder:scifact/test.json", n_train=4)


def test_later_seeds_copy_the_steps_no_seed_enters(tmp_path):
    """Round 0 (base model) and round 1's BM25 mining + LM scoring are the same for every seed: a later seed
    copies them from a finished seed; the seed's own model and its evaluation are never copied."""
    ctx = _iter_ctx()
    _finished_rounds(tmp_path / "r" / "ours-3iter" / "seed0")
    seed1 = tmp_path / "r" / "ours-3iter" / "seed1"
    copied = qr.copy_seed_independent_steps(ctx, seed1, seed1 / "3iter")
    names = sorted(str(p.relative_to(seed1 / "3iter")) for p in copied)
    assert names == ["round-0/test.eval.eval.json", "round-0/test.run.eval.trec",
                     "round-1/train.neg.bm25.json", "round-1/train.neg.bm25.meta.json",
                     "round-1/train.neg.bm25.scored.lm.json", "round-1/train.neg.bm25.scored.lm.meta.json",
                     "round-1/train.run.bm25.trec"]
    assert (seed1 / "3iter" / "round-1" / "train.neg.bm25.scored.lm.json").read_text() == "seed0 train.neg.bm25.scored.lm.json"
    assert "round-1: copied" in (seed1 / "log.txt").read_text()
    assert qr.copy_seed_independent_steps(ctx, seed1, seed1 / "3iter") == []  # already there: nothing again
    seed0 = tmp_path / "r" / "ours-3iter" / "seed0"
    assert qr.copy_seed_independent_steps(ctx, seed0, seed0 / "3iter") == []


def test_another_recipes_unit_is_a_source_when_it_did_the_same_work(tmp_path):
    """Epochs and lr do not enter round 0 or round 1's mining and scoring: a unit of another recipe folder of
    the same split is copied from; one evaluated at another key length (round 0) is not."""
    _finished_rounds(tmp_path / "lr=0.0001" / "ours-3iter" / "seed0")
    mine = tmp_path / "epochs=2.0,lr=0.0001" / "ours-3iter" / "seed0"
    copied = qr.copy_seed_independent_steps(_iter_ctx(epochs=2.0), mine, mine / "3iter")
    assert {p.parent.name for p in copied} == {"round-0", "round-1"}
    other = tmp_path / "key_max_length=128" / "ours-3iter" / "seed0"
    copied = qr.copy_seed_independent_steps(_iter_ctx(key_max_length=128), other, other / "3iter")
    assert {p.parent.name for p in copied} == {"round-1"}  # round 0 encoded keys at 256: evaluated anew


@pytest.mark.parametrize("rows,max_neg,template", [(3, 1, "query_likelihood"), (4, 2, "query_likelihood"),
                                                   (4, 1, "qa")])
def test_a_unit_mined_or_scored_otherwise_is_not_copied(tmp_path, rows, max_neg, template):
    """--iter_queries is not part of the units' folder: round 1 mined for another number of queries (or
    negatives), or scored with another template, stays where it is; round 0 does not depend on it and is
    still copied."""
    _finished_rounds(tmp_path / "r" / "ours-3iter" / "seed0", rows=rows, max_neg=max_neg, template=template)
    seed2 = tmp_path / "r" / "ours-3iter" / "seed2"
    copied = qr.copy_seed_independent_steps(_iter_ctx(), seed2, seed2 / "3iter")
    assert {p.parent.name for p in copied} == {"round-0"}


def test_a_resumed_three_iteration_unit_reports_every_runs_steps(tmp_path):
    """3iter.sh appends (round, step, seconds) per finished step; the unit's cost is the latest line of each
    step summed, over every run, not the last run's wall time; no file means nothing was timed."""
    assert qr.recorded_step_seconds(tmp_path) is None
    (tmp_path / "timings.tsv").write_text("0\tevaluate\t60\n1\tmine\t30\n1\tscore\t600\n1\tscore\t900\n")
    assert qr.recorded_step_seconds(tmp_path) == 60 + 30 + 900


def test_iter_vs_epochs_pairs_round_r_with_distillation_at_r_epochs(tmp_path):
    """Round R of the 3-iteration unit (R epochs in all) is compared per query with ours-distill at epochs=R,
    found in quality.py's folder for that recipe; differences by hand."""
    import iter_vs_epochs as ive

    def unit(folder: Path, name: str, values: list[float]) -> None:
        folder.mkdir(parents=True)
        (folder / name).write_text("".join(json.dumps({"query_id": i, "ndcg@10": v}) + "\n" for i, v in enumerate(values)))

    sets = ["lr=1e-4"]
    for r, (it, di) in enumerate([([0.5, 0.7], [0.5, 0.5]), ([0.9, 0.7], [0.6, 0.8])], start=1):
        unit(tmp_path / ive.recipe_folder(sets) / "ours-3iter" / "seed0" / "3iter" / f"round-{r}", "test.metrics.eval.jsonl", it)
        unit(tmp_path / ive.recipe_folder(sets, r) / "ours-distill" / "seed0", "test.metrics.model.jsonl", di)
    assert ive.recipe_folder(sets, 2) == "epochs=2.0,lr=0.0001" and ive.recipe_folder(sets, 1) == "lr=0.0001"
    rows = ive.compare(tmp_path, sets, 0, 2, "ndcg@10")
    assert [r["mean"] for r in rows] == pytest.approx([0.1, 0.1]) and [(r["wins"], r["losses"]) for r in rows] == [(1, 0), (1, 1)]


def test_score_command_runs_under_torchrun_with_several_processes(tmp_path):
    inputs = qi.shared_inputs(tmp_path, "scifact", 3, 4, 192)
    one, two = qi.score_cmd(qr.DATASETS["scifact"], inputs), qi.score_cmd(qr.DATASETS["scifact"], inputs, 2)
    assert one[1].endswith("run_lm_score.py")
    assert two[:6] == [qr.PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert two[6:] == one[1:]                      # the same scoring arguments: the same output, resumable either way


def test_shared_inputs_refuse_other_sizes(tmp_path):
    inputs = qi.shared_inputs(tmp_path, "scifact", 3, 4, 192)
    inputs.folder.mkdir(parents=True)
    qi.record_settings(inputs)
    assert qi.shared_inputs(tmp_path, "scifact", 3, 4, 192).settings == inputs.settings
    with pytest.raises(ValueError, match="shared inputs were made with"):
        qi.shared_inputs(tmp_path, "scifact", 5, 4, 192)


def test_dev_split_is_deterministic_disjoint_and_from_train(tmp_path):
    spec = qr.DATASETS["scifact"]
    inputs = qi.shared_inputs(tmp_path, "scifact", 3, 4, 192)
    split = qi.make_split(tmp_path, "scifact", spec, inputs, "dev", 100, None)
    train, dev = qi.read_jsonl(split.train), qi.read_jsonl(split.eval_data)
    assert len(dev) == 100 and len(train) == 809 - 100 == split.n_train
    assert not {r["query_id"] for r in train} & {r["query_id"] for r in dev}
    test_ids = {r["query_id"] for r in qi.read_jsonl(spec.test)}
    assert not test_ids & {r["query_id"] for r in dev}
    assert qi.dev_query_ids(list(reversed(qi.read_jsonl(spec.train))), 100) == {r["query_id"] for r in dev}
    with pytest.raises(ValueError, match="--dev_queries"):
        qi.dev_query_ids(train, 0)


def test_st_examples_take_first_positive_and_seeded_random_negatives():
    corpus = [f"doc{i}" for i in range(6)]
    records = [{"query": "q1", "pos_index": [2, 3], "neg_index": [0, 1, 5]}, {"query": "q2", "pos_index": [4], "neg_index": [1]}]
    cols = examples(records, corpus, 3, seed=0)
    assert cols["anchor"] == ["q1", "q2"] and cols["positive"] == ["doc2", "doc4"]
    assert sorted(cols[f"negative_{i}"][0] for i in (1, 2, 3)) == ["doc0", "doc1", "doc5"]  # all three, no repeat
    assert [cols[f"negative_{i}"][1] for i in (1, 2, 3)] == ["doc1"] * 3                       # one mined: repeated
    picks = {examples(records[:1], corpus, 1, seed=s)["negative_1"][0] for s in range(20)}
    assert picks == {"doc0", "doc1", "doc5"}                                 # one negative: drawn, not always the first
    assert examples(records, corpus, 1, seed=7) == examples(records, corpus, 1, seed=7)
    with pytest.raises(ValueError, match="record 1: needs pos_index and neg_index"):
        examples([{"query": "q", "pos_index": [1]}], corpus, 1)


def fake_row(name: str, calls: list, trained: bool = True, needs=()):
    def runner(ctx, unit, folder, run):
        calls.append(unit.name)
        out = folder / "test.eval.fake.json"
        out.write_text(json.dumps({"metrics": {"ndcg@10": 0.5 + 0.01 * (unit.seed or 0), "recall@100": 0.9,
                                               "mrr@10": 0.4}}))
        return out
    return qr.Row(name, name.upper(), trained, needs, runner)


def test_run_table_resumes_and_aggregates(tmp_path, monkeypatch):
    calls: list[str] = []
    rows = {"base": fake_row("base", calls, trained=False), "a": fake_row("a", calls)}
    monkeypatch.setattr(quality, "ROWS", rows)
    argv = ["--rows", "base", "a", "--seeds", "0", "1", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")]
    root = tmp_path / "out" / "scifact" / "test" / "default"
    stale = root / "a" / "seed1"                          # an interrupted attempt: folder without a result
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half")
    assert quality.main(argv) == 0
    assert calls == ["base/once", "a/seed0", "a/seed1"] and not (stale / "junk").exists()
    assert quality.main(argv) == 0                        # everything finished: nothing runs again
    assert calls == ["base/once", "a/seed0", "a/seed1"]
    agg = json.loads((tmp_path / "res" / "quality_scifact.json").read_text())
    a = agg["rows"][1]
    assert a["n_seeds"] == 2 and a["summary"]["ndcg@10"]["mean"] == pytest.approx(0.505)
    assert "| A | 0.5050 ± 0.0071 |" in (tmp_path / "res" / "quality_scifact.md").read_text()
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "3 of 3 units to run" in log and "0 of 3 units to run" in log


def test_an_interrupted_three_iteration_unit_keeps_the_steps_3iter_sh_resumes(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(quality, "ROWS", {"ours-3iter": fake_row("ours-3iter", calls), "a": fake_row("a", calls)})
    root = tmp_path / "out" / "scifact" / "test" / "default"
    for row in ("ours-3iter", "a"):
        stale = root / row / "seed0"
        (stale / "3iter" / "round-1").mkdir(parents=True)
        (stale / "3iter" / "round-1" / "train.neg.bm25.json").write_text("mined")
        (stale / "log.txt").write_text("the failed attempt")
    argv = ["--rows", "ours-3iter", "a", "--seeds", "0", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")]
    assert quality.main(argv) == 0 and sorted(calls) == ["a/seed0", "ours-3iter/seed0"]
    assert (root / "ours-3iter" / "seed0" / "3iter" / "round-1" / "train.neg.bm25.json").read_text() == "mined"
    assert not (root / "ours-3iter" / "seed0" / "log.txt").exists()  # the failed attempt's log went (fakes log nothing)
    assert not (root / "a" / "seed0" / "3iter").exists()  # other rows start over entirely


def test_stop_after_starts_nothing_new(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(quality, "ROWS", {"a": fake_row("a", calls)})
    argv = ["--rows", "a", "--seeds", "0", "--out", str(tmp_path), "--results", str(tmp_path / "res"),
            "--stop_after", "00:00"]
    assert quality.main(argv) == 0
    assert calls == [] and "not starting a/seed0" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_tiny_real_table_and_steps_plot(tmp_path):
    """The real script on a tiny dev split: base model, our trainer with checkpoints, then the steps plot
    (checkpoint evaluation). About a minute on an idle machine (three model loads, two training steps)."""
    import subprocess
    common = ["--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"), "--img", str(tmp_path / "img"),
              "--split", "dev", "--dev_queries", "2", "--dev_corpus_subsample", "10", "--max_train_queries", "4",
              "--seeds", "0", "--set", "batch=2", "key_max_length=32", "--threads", "1", "--rows", "base", "ours-random"]
    run = [sys.executable, str(REPO / "benchmarks" / "quality.py"), *common]
    subprocess.run(run, check=True, cwd=REPO, timeout=1800)
    res = json.loads((tmp_path / "res" / "quality_scifact_dev_batch-2_key_max_length-32_max_train_queries-4_dev_queries-2_dev_corpus_subsample-10.json").read_text())
    ours = res["rows"][1]
    assert ours["n_seeds"] == 1 and 0 <= ours["summary"]["ndcg@10"]["mean"] <= 1
    assert "run_dense.py" in ours["units"][0]["commands"][0] and "--seed 0" in ours["units"][0]["commands"][0]
    subprocess.run([*run, "--steps_plot", "ours-random"], check=True, cwd=REPO, timeout=1800)
    # the plot's files carry the recipe's name, as the table's do (a default-recipe plot is quality_scifact_steps)
    steps = json.loads((tmp_path / "res" / "quality_scifact_dev_batch-2_key_max_length-32_max_train_queries-4_dev_queries-2_dev_corpus_subsample-10_steps.json").read_text())
    assert [p["step"] for p in steps["curves"]["ours-random"]] == [0, 1, 2]
    assert (tmp_path / "img" / "quality_scifact_dev_batch-2_key_max_length-32_max_train_queries-4_dev_queries-2_dev_corpus_subsample-10_steps.png").stat().st_size > 1000


def test_table_settings_outside_the_recipe_name_their_own_table():
    """Negatives mined deeper (or any other non-default input) are another table: its own units folder, records
    and aggregate, never mixed with the default one; dev-only settings name dev tables only."""
    base = quality.parse_args(["--set", "lr=1e-4"])
    assert quality.table_tag(base) == "lr=0.0001" and quality.table_tag(quality.parse_args([])) == "default"
    deep = quality.parse_args(["--set", "lr=1e-4", "--neg_depth", "10"])
    assert quality.table_tag(deep) == "lr=0.0001,neg_depth=10"
    assert quality.units_root(deep) != quality.units_root(base) and quality.unit_records(deep) != quality.unit_records(base)
    assert quality.results_stem(deep) == "quality_scifact_test_lr-0.0001_neg_depth-10"
    assert quality.table_tag(quality.parse_args(["--neg_depth", "5"])) == "neg_depth=5"
    assert quality.table_tag(quality.parse_args(["--dev_queries", "50"])) == "default"  # test split: not used
    assert quality.table_tag(quality.parse_args(["--split", "dev", "--dev_queries", "50"])) == "dev_queries=50"


def test_scoring_pid_ignores_exited_scorers(tmp_path):
    import subprocess
    inputs = qi.shared_inputs(tmp_path, "scifact", 3, 4, 192)
    inputs.folder.mkdir(parents=True)
    assert qi.scoring_pid(inputs) is None                      # no pid file
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    inputs.pid_file.write_text(str(sleeper.pid))
    assert qi.scoring_pid(inputs) == sleeper.pid               # running
    sleeper.kill()
    import time
    for _ in range(50):                                        # exited, not reaped yet: a zombie
        if Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert qi.scoring_pid(inputs) is None
    sleeper.wait()
    assert qi.scoring_pid(inputs) is None                      # reaped


def test_steps_curve_full_corpus_and_subsample(tmp_path, monkeypatch):
    import quality_plot
    evaluated = []

    def fake_runner(log_file, threads, commands):
        def run(cmd, env=None):
            out, name, encoder = (cmd[cmd.index(flag) + 1] for flag in ("--output_dir", "--save_name", "--query_encoder"))
            evaluated.append((encoder, "--corpus_subsample" in cmd))
            value = 0.1 if encoder == "minilm" else 0.2 + 0.1 * int(encoder.rsplit("-", 1)[-1]) if "checkpoint" in encoder else 0.9
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"test.eval.{name}.json").write_text(json.dumps({"metrics": {"ndcg@10": value}}))
        return run

    monkeypatch.setattr(quality_plot, "subprocess_runner", fake_runner)
    write_result(tmp_path, qp.Unit("base", None), 0.6)
    write_result(tmp_path, qp.Unit("a", 0), 0.7)
    for step in (1, 2, 3):  # 4 queries, batch 2, 1.5 epochs: 3 steps, so checkpoint-3 is the saved model itself
        (qp.Unit("a", 0).folder(tmp_path) / "model" / f"checkpoint-{step}").mkdir(parents=True)
    ctx = qr.Context("scifact", qr.DATASETS["scifact"], qr.Recipe(batch=2, epochs=1.5), "t", None, None,
                     "llm-embedder:scifact/test.json", n_train=4)
    full = quality_plot.curve(ctx, tmp_path, "a", 0, print)
    assert [(p["step"], p["ndcg@10"]) for p in full] == [(0, 0.6), (1, pytest.approx(0.3)), (2, pytest.approx(0.4)), (3, 0.7)]
    assert [e for e, _ in evaluated] == [str(qp.Unit("a", 0).folder(tmp_path) / "model" / f"checkpoint-{s}") for s in (1, 2)]
    assert quality_plot.curve(ctx, tmp_path, "a", 0, print) == full and len(evaluated) == 2  # resumed: no new evaluation
    ctx.corpus_subsample = 50
    sub = quality_plot.curve(ctx, tmp_path, "a", 0, print)
    assert [(p["step"], p["ndcg@10"]) for p in sub] == [(0, 0.1), (1, pytest.approx(0.3)), (2, pytest.approx(0.4)), (3, 0.9)]
    assert len(evaluated) == 6 and all(flag for _, flag in evaluated[2:])  # every subsample point evaluated on it
    png = quality_plot.draw({"a": sub}, {"a": "row A"}, tmp_path / "img" / "steps.png", "title")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="needs finished units"):
        quality_plot.curve(ctx, tmp_path, "b", 0, print)


def test_steps_curve_of_the_3iteration_row_is_its_rounds(tmp_path, monkeypatch):
    """The 3-iteration row keeps no checkpoints: its points are the rounds' ends, at the steps trained so far
    (each round's logged steps added up), from each round's own test evaluation; an unfinished round is left out."""
    import quality_plot
    evaluated = []

    def fake_runner(log_file, threads, commands):
        def run(cmd, env=None):
            out, name, encoder = (cmd[cmd.index(flag) + 1] for flag in ("--output_dir", "--save_name", "--query_encoder"))
            evaluated.append(encoder)
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"test.eval.{name}.json").write_text(json.dumps({"metrics": {"ndcg@10": 0.5}}))
        return run

    monkeypatch.setattr(quality_plot, "subprocess_runner", fake_runner)
    unit = qp.Unit(qr.ITER_ROW, 0)
    write_result(tmp_path, qp.Unit("base", None), 0.6)
    write_result(tmp_path, unit, 0.79)
    ctx = qr.Context("scifact", qr.DATASETS["scifact"], qr.Recipe(), "t", None, None, "llm-embedder:scifact/test.json", n_train=809)
    for r, steps, ndcg in ((1, 17, 0.70), (2, 16, 0.75), (3, 17, 0.79)):
        folder = unit.folder(tmp_path) / "3iter" / f"round-{r}"
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, steps + 1)) + json.dumps({"step": steps, "train_runtime": 9}) + "\n")
        (folder / "test.eval.eval.json").write_text(json.dumps({"metrics": {"ndcg@10": ndcg}}))
    for r in (1, 2):
        (unit.folder(tmp_path) / "3iter" / f"round-{r}" / "model" / ".complete").touch()
    with pytest.raises(ValueError, match="train_log.jsonl has no logged step"):
        (unit.folder(tmp_path) / "3iter" / "round-2" / "model" / "train_log.jsonl").write_text("")
        quality_plot.rounds(unit.folder(tmp_path))
    (unit.folder(tmp_path) / "3iter" / "round-2" / "model" / "train_log.jsonl").write_text(json.dumps({"step": 16}) + "\n")
    assert [s for s, _ in quality_plot.rounds(unit.folder(tmp_path))] == [17, 33]   # round 3 unfinished: left out
    (unit.folder(tmp_path) / "3iter" / "round-3" / "model" / ".complete").touch()
    full = quality_plot.curve(ctx, tmp_path, qr.ITER_ROW, 0, print)
    assert [(p["step"], p["ndcg@10"]) for p in full] == [(0, 0.6), (17, 0.70), (33, 0.75), (50, 0.79)]
    assert evaluated == []                                            # the rounds' own evaluations, none redone
    ctx.corpus_subsample = 50
    sub = quality_plot.curve(ctx, tmp_path, qr.ITER_ROW, 0, print)
    assert [p["step"] for p in sub] == [0, 17, 33, 50] and len(evaluated) == 4  # every point on the subsample
    assert evaluated[1:] == [str(unit.folder(tmp_path) / "3iter" / f"round-{r}" / "model") for r in (1, 2, 3)]
    with pytest.raises(ValueError, match="has no finished round"):
        write_result(tmp_path, qp.Unit(qr.ITER_ROW, 1), 0.7)
        quality_plot.curve(ctx, tmp_path, qr.ITER_ROW, 1, print)


def test_aggregate_carries_the_paired_comparisons(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(quality, "ROWS", {"ours-bm25": fake_row("ours-bm25", calls), "st-mnrl": fake_row("st-mnrl", calls)})
    argv = ["--rows", "ours-bm25", "st-mnrl", "--seeds", "0", "1", "--out", str(tmp_path), "--results", str(tmp_path / "res")]
    assert quality.main(argv) == 0
    agg = json.loads((tmp_path / "res" / "quality_scifact.json").read_text())
    assert [(c["a"], c["b"]) for c in agg["comparisons"]] == [("ours-bm25", "st-mnrl")]
    assert agg["comparisons"][0]["seeds"]["differences"] == [0.0, 0.0]     # the fake rows score alike per seed
    assert "| `ours-bm25` minus `st-mnrl` | 0: +0.0000, 1: +0.0000 |" in (tmp_path / "res" / "quality_scifact.md").read_text()


def test_steps_json_names_the_png_relative_to_the_checkout(tmp_path):
    import quality_plot
    assert quality_plot._repo_relative(qr.REPO / "docs" / "img" / "x.png") == "docs/img/x.png"
    assert quality_plot._repo_relative(tmp_path / "x.png") == str(tmp_path / "x.png")   # outside: left as given


def test_a_recipe_with_a_decimal_point_keeps_its_whole_name_in_the_results_files(tmp_path, monkeypatch):
    """lr=1e-4 prints as 0.0001: the aggregate's name must not be cut at that dot (it was quality_scifact_lr-0.json)."""
    calls: list[str] = []
    monkeypatch.setattr(quality, "ROWS", {"a": fake_row("a", calls)})
    argv = ["--rows", "a", "--seeds", "0", "--out", str(tmp_path), "--results", str(tmp_path / "res"),
            "--set", "lr=1e-4", "fast_attention_dropout=true"]
    assert quality.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [
        "quality_scifact_test_lr-0.0001_fast_attention_dropout-True.json",
        "quality_scifact_test_lr-0.0001_fast_attention_dropout-True.md", "quality_units"]
