"""TrainDataset: positive/negative selection, score alignment, filters, per-epoch determinism, bad input."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from llm_embedder import tasks
from llm_embedder.corpus import Corpus
from llm_embedder.data.dataset import TrainDataArgs, TrainDataset
from llm_embedder.errors import UserError
from llm_embedder.schema import read_records, write_records


def scored_row(query, pos_scores, neg_scores, task="qa", **extra):
    """Keys named after their scores' positions (p0.., n0..); returns (record, {key: score})."""
    pos = [f"{query}-p{i}" for i in range(len(pos_scores))]
    neg = [f"{query}-n{i}" for i in range(len(neg_scores))]
    record = {"query": query, "pos": pos, "neg": neg, "teacher_scores": list(pos_scores) + list(neg_scores),
              "task": task, **extra}
    return record, dict(zip(pos + neg, list(pos_scores) + list(neg_scores)))


def write(tmp_path, name, records):
    return write_records(tmp_path / name, records)


def assert_aligned(item, score_of):
    assert item["teacher_scores"] == [score_of[k] for k in item["keys"]]


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(tasks, "_OVERRIDES", {k: dict(v) for k, v in tasks._OVERRIDES.items()})


# ---------------------------------------------------------------- positive selection
def test_select_positive_first(tmp_path):
    record, score_of = scored_row("q", [1.0, 5.0], [0.5, 0.4, 0.3])
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=4, select_positive="first")
    for epoch in range(3):
        item = ds[(epoch, 0)]
        assert item["keys"][0] == "q-p0"
        assert sorted(item["keys"][1:]) == ["q-n0", "q-n1", "q-n2"]  # the other positive is never a negative
        assert_aligned(item, score_of)


def test_select_positive_teacher_takes_a_negative_and_removes_it(tmp_path):
    record, score_of = scored_row("q", [1.0], [0.5, 3.0, 0.3, 0.2])
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=5, select_positive="teacher",
                      select_negative="top")
    item = ds[0]
    # 3 negatives left, cycled to 4 (best first); ranking by the teacher is the loss's job, not the dataset's
    assert item["keys"] == ["q-n1", "q-n0", "q-n2", "q-n3", "q-n0"]
    assert item["teacher_scores"] == [3.0, 0.5, 0.3, 0.2, 0.5]
    assert_aligned(item, score_of)


def test_select_positive_teacher_without_positives_lrlm_style(tmp_path):
    record = {"query": "chunk", "pos": [], "neg": ["c0", "c1", "c2"], "teacher_scores": [-2.0, -1.5, -3.0],
              "task": "lrlm"}
    ds = TrainDataset([write(tmp_path, "lrlm.json", [record])], train_group_size=3)  # lrlm recipe: teacher
    item = ds[0]
    assert item["keys"][0] == "c1" and item["teacher_scores"][0] == -1.5
    assert sorted(item["keys"][1:]) == ["c0", "c2"]


def test_select_positive_random_is_seeded_per_epoch_and_covers_all_positives(tmp_path):
    record, score_of = scored_row("q", [3.0, 2.0, 1.0], [0.0] * 5)
    path = write(tmp_path, "a.json", [record])
    ds = TrainDataset([path], train_group_size=2, select_positive="random", seed=7)
    again = TrainDataset([path], train_group_size=2, select_positive="random", seed=7)
    firsts = [ds[(epoch, 0)]["keys"][0] for epoch in range(60)]
    assert firsts == [again[(epoch, 0)]["keys"][0] for epoch in range(60)]
    counts = Counter(firsts)
    assert set(counts) == {"q-p0", "q-p1", "q-p2"} and min(counts.values()) >= 10
    for epoch in range(5):
        assert_aligned(ds[(epoch, 0)], score_of)


def test_chat_history_are_the_keys(tmp_path):
    record = {"query": "now?", "history": ["h0", "h1", "h2", "h3"], "teacher_scores": [0.1, 0.9, 0.3, 0.2],
              "task": "chat"}
    ds = TrainDataset([write(tmp_path, "chat.json", [record])], train_group_size=4)
    item = ds[0]
    assert item["keys"][0] == "h1" and sorted(item["keys"]) == ["h0", "h1", "h2", "h3"]
    assert_aligned(item, dict(zip(record["history"], record["teacher_scores"])))


# ---------------------------------------------------------------- negatives
def test_select_negative_top_takes_the_best_scored(tmp_path):
    record, score_of = scored_row("q", [9.0], [1.0, 4.0, 2.0, 8.0, 3.0])
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=4, select_negative="top")
    for epoch in range(3):
        assert ds[(epoch, 0)]["keys"] == ["q-p0", "q-n3", "q-n1", "q-n4"]


def test_select_negative_top_without_scores_takes_the_first_listed(tmp_path):
    record = {"query": "q", "pos": ["p"], "neg": ["a", "b", "c", "d"], "task": "tool"}
    ds = TrainDataset([write(tmp_path, "t.json", [record])], train_group_size=3, select_negative="top")
    assert ds[(4, 0)] == {"query": "q", "keys": ["p", "a", "b"], "teacher_scores": None, "task": "tool",
                          "dataset": 0, "query_id": 1}


def test_random_negatives_are_deterministic_per_epoch_and_change_between_epochs(tmp_path):
    records = [scored_row(f"q{i}", [1.0], list(np.linspace(0, -1, 30)), task="tool")[0] for i in range(4)]
    for r in records:
        del r["teacher_scores"]
    path = write(tmp_path, "a.json", records)
    ds = TrainDataset([path], train_group_size=6, seed=3)
    fresh = TrainDataset([path], train_group_size=6, seed=3)
    for i in range(4):
        assert ds[(2, i)] == fresh[(2, i)]  # a second dataset (as a dataloader worker or rank holds) agrees
        negatives = ds[(2, i)]["keys"][1:]
        assert len(set(negatives)) == 5  # without replacement when there are enough
    assert any(ds[(0, i)]["keys"] != ds[(1, i)]["keys"] for i in range(4))
    assert any(ds[(0, i)]["keys"] != TrainDataset([path], train_group_size=6, seed=4)[(0, i)]["keys"] for i in range(4))


def test_too_few_negatives_are_repeated_evenly_with_their_scores(tmp_path):
    record, score_of = scored_row("q", [5.0], [1.0, 2.0])
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=6)
    for epoch in range(4):
        item = ds[(epoch, 0)]
        assert len(item["keys"]) == 6 and item["keys"][0] == "q-p0"
        assert sorted(Counter(item["keys"][1:]).values()) == [2, 3]
        assert_aligned(item, score_of)


def test_stable_distill_tasks_keep_the_sampled_order_and_the_loss_ranks_them(tmp_path):
    """The dataset yields keys as sampled (positive first); the stable-distillation loss orders them by teacher
    score itself, so it is the same for any order of the negatives."""
    import torch

    from llm_embedder.modeling.losses import stable_distill_loss

    record, score_of = scored_row("q", [0.0], [0.5, 3.0, -1.0, 2.0, 1.0, 4.0], task="qa")  # qa: stable_distill
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=4)
    orders = [ds[(epoch, 0)]["teacher_scores"][1:] for epoch in range(10)]
    assert any(o != sorted(o, reverse=True) for o in orders)  # not re-sorted by the dataset
    for epoch in range(3):
        item = ds[(epoch, 0)]
        assert item["keys"][0] == "q-p0" and item["teacher_scores"][0] == 0.0
        assert_aligned(item, score_of)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, generator=gen, dtype=torch.float64), torch.randn(4, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([[0.0, 0.5, 3.0, -1.0]], dtype=torch.float64)
    perm = [0, 2, 3, 1]
    assert stable_distill_loss(q, k, t, 4).item() == pytest.approx(stable_distill_loss(q, k[perm], t[:, perm], 4).item(),
                                                                  rel=1e-12)


def test_kl_tasks_keep_the_sampled_negative_order(tmp_path):
    record, score_of = scored_row("q", [9.0], [float(i) for i in range(8)], task="tool")
    ds = TrainDataset([write(tmp_path, "a.json", [record])], train_group_size=5, contrastive_weight=1.0)
    orders = [ds[(e, 0)]["teacher_scores"][1:] for e in range(10)]
    assert any(o != sorted(o, reverse=True) for o in orders)


def test_rows_without_negatives_get_random_corpus_rows_but_never_their_positive(tmp_path):
    corpus = Corpus.from_texts([f"doc {i}" for i in range(20)])
    records = [{"query": f"q{i}", "pos_index": [i]} for i in range(5)]
    ds = TrainDataset([write(tmp_path, "a.json", records)], corpus=corpus, train_group_size=8, default_task="qa")
    for epoch in range(3):
        for i in range(5):
            item = ds[(epoch, i)]
            assert item["keys"][0] == f"doc {i}" and f"doc {i}" not in item["keys"][1:]
            assert len(set(item["keys"][1:])) == 7 and item["teacher_scores"] is None
    again = TrainDataset([write(tmp_path, "b.json", records)], corpus=corpus, train_group_size=8, default_task="qa")
    assert ds[(0, 0)] == again[(0, 0)] and ds[(0, 0)] != ds[(1, 0)]


def test_random_negatives_exclude_a_positive_given_as_text(tmp_path):
    """A positive given as text (not as a row) is still a corpus row: it must not come back as a negative,
    nor may a copy of it under another row (same text up to case and spacing, as mining compares)."""
    corpus = Corpus.from_texts(["the answer", "The  Answer", "x", "y", "z"])
    record = {"query": "q", "pos": ["the answer"]}
    ds = TrainDataset([write(tmp_path, "a.json", [record])], corpus=corpus, train_group_size=4, default_task="qa")
    for epoch in range(20):
        keys = ds[(epoch, 0)]["keys"]
        assert keys[0] == "the answer" and sorted(keys[1:]) == ["x", "y", "z"], keys


def test_corpus_rows_become_texts(tmp_path):
    corpus = Corpus.from_texts(["zero", "one", "two", "three"])
    record = {"query": "q", "pos_index": [2], "neg_index": [0, 3], "teacher_scores": [1.0, 0.0, 0.5], "task": "qa"}
    ds = TrainDataset([write(tmp_path, "a.json", [record])], corpus=corpus, train_group_size=3)
    assert ds[0]["keys"] == ["two", "zero", "three"] and ds[0]["teacher_scores"] == [1.0, 0.0, 0.5]


def test_group_size_one_needs_no_negatives(tmp_path):
    ds = TrainDataset([write(tmp_path, "a.json", [{"query": "q", "pos": ["p"]}])], train_group_size=1,
                      default_task="tool")
    assert ds[0]["keys"] == ["p"]


# ---------------------------------------------------------------- filters
def test_score_filters_count_what_they_drop(tmp_path, caplog):
    rows = [
        scored_row("keep", [2.0], [1.0, 0.0])[0],  # best 2.0, spread 2.0
        scored_row("low", [0.4], [0.1, -1.0])[0],  # best 0.4 < min 0.5
        scored_row("flat", [1.0], [0.95, 0.9])[0],  # spread 0.1 < margin 0.2
        scored_row("neg-best", [0.0], [3.0, -1.0])[0],  # best is a negative: best 3.0, spread 4.0 -> kept
    ]
    ds = TrainDataset([write(tmp_path, "a.json", rows)], train_group_size=3, teacher_scores_min=0.5,
                      teacher_scores_margin=0.2)
    assert [ds[i]["query"] for i in range(len(ds))] == ["keep", "neg-best"]
    report = ds.filter_report[0]
    assert (report["records"], report["kept"], report["below_teacher_scores_min"],
            report["below_teacher_scores_margin"]) == (4, 2, 1, 1)
    assert "2 of 4 records kept (1 below teacher_scores_min, 1 below teacher_scores_margin" in caplog.text


def test_lrlm_recipe_margin_is_the_reference_spread(toy_dir):
    # every toy lrlm row spans >= 0.109 between its best and worst key: all survive the recipe's 0.1 margin
    ds = TrainDataset([toy_dir / "lrlm.json"], train_group_size=4)
    assert ds.filter_report[0]["kept"] == 8
    ds = TrainDataset([toy_dir / "lrlm.json"], train_group_size=4, teacher_scores_min=-2.2)
    spreads_best = [max(json.loads(line)["teacher_scores"]) for line in (toy_dir / "lrlm.json").open()]
    assert ds.filter_report[0]["below_teacher_scores_min"] == sum(b < -2.2 for b in spreads_best) > 0


def test_a_file_filtered_empty_is_an_error(tmp_path):
    path = write(tmp_path, "a.json", [scored_row("q", [0.1], [0.0])[0]])
    with pytest.raises(UserError, match=r"a.json: all 1 records were filtered out \(1 below teacher_scores_min 5.0"):
        TrainDataset([path], train_group_size=2, teacher_scores_min=5.0)


def test_filters_on_an_unscored_file_are_reported_not_applied(tmp_path):
    path = write(tmp_path, "t.json", [{"query": "q", "pos": ["p"], "neg": ["n"], "task": "tool"}])
    ds = TrainDataset([path], train_group_size=2, teacher_scores_margin=0.5)
    assert len(ds) == 1 and ds.filter_report[0]["filters_not_applied"] == "no teacher_scores in this file"


def test_max_sample_num_keeps_the_first_rows_and_counts_the_rest(tmp_path, registry):
    tasks.register_task(tasks.TaskRecipe("small", max_sample_num=2))
    rows = [{"query": f"q{i}", "pos": ["p"], "neg": ["n"], "task": "small"} for i in range(5)]
    ds = TrainDataset([write(tmp_path, "a.json", rows)], train_group_size=2)
    assert [ds[i]["query"] for i in range(len(ds))] == ["q0", "q1"]
    assert ds.filter_report[0]["over_max_sample_num"] == 3


# ---------------------------------------------------------------- files, tasks, recipes
def test_several_files_a_directory_and_upsampling(tmp_path, toy_dir):
    ds = TrainDataset([toy_dir, toy_dir / "tool.json"], train_group_size=2)
    assert ds.tasks == ["chat", "convsearch", "icl", "lrlm", "qa", "tool", "tool"]
    assert ds.file_sizes == [8] * 7 and len(ds) == 56
    a, b = ds[(0, 40)], ds[(0, 48)]  # the same record in the original and in the repeated file
    assert (a["query"], a["dataset"], b["dataset"]) == (b["query"], 5, 6)
    assert ds.files[5] is ds.files[6]  # prepared once
    assert len(ds.filter_report) == 7


def test_records_without_task_get_the_default_task(tmp_path):
    path = write(tmp_path, "a.json", [{"query": "q", "pos": ["p"], "neg": ["n"]}])
    assert TrainDataset([path], default_task="tool", train_group_size=2)[0]["task"] == "tool"
    with pytest.raises(UserError, match=r"a.json:1: task: missing and no --default_task given"):
        TrainDataset([path], train_group_size=2)


def test_recipe_beats_the_command_line_and_task_config_beats_the_recipe(tmp_path, registry):
    record, _ = scored_row("q", [0.0, 0.1], [1.0, 5.0, 2.0], task="icl")
    path = write(tmp_path, "icl.json", [record])
    ds = TrainDataset([path], train_group_size=2)  # icl recipe: random
    assert ds.recipes[0].select_positive == "random" and ds.recipes[0].source("select_positive") == "recipe"
    assert {ds[(e, 0)]["keys"][0] for e in range(20)} == {"q-p0", "q-p1"}  # random among the labelled positives
    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"icl": {"select_positive": "teacher"}}))
    tasks.load_task_config(config)
    ds = TrainDataset([path], train_group_size=2)
    assert ds[0]["keys"][0] == "q-n1" and ds.recipes[0].source("select_positive") == "task_config"


def test_args_from_argument_objects(tmp_path):
    class DataArgs:
        train_group_size = 3
        select_negative = "top"
        default_task = "tool"

    class TrainingArgs:
        seed = 11
        train_group_size = 99  # the first object that sets a field wins

    args = TrainDataArgs.from_args(DataArgs(), TrainingArgs())
    assert (args.train_group_size, args.select_negative, args.seed, args.default_task) == (3, "top", 11, "tool")
    path = write(tmp_path, "a.json", [{"query": "q", "pos": ["p"], "neg": ["a", "b", "c"]}])
    assert TrainDataset([path], args=DataArgs())[0]["keys"] == ["p", "a", "b"]
    with pytest.raises(TypeError, match="unknown argument 'group_size'"):
        TrainDataset([path], group_size=2)


def test_from_records_and_record_files_are_validated(tmp_path):
    ds = TrainDataset.from_records([{"query": "q", "pos": ["p"], "neg": ["n"]}], default_task="tool", train_group_size=2)
    assert ds[0]["keys"] == ["p", "n"]
    with pytest.raises(UserError, match=r"<records>:1: task: unknown task 'nope'"):
        TrainDataset.from_records([{"query": "q", "pos": ["p"], "task": "nope"}])
    rf = read_records(write(tmp_path, "a.json", [{"query": "q", "neg": ["n"]}]), purpose="any")
    with pytest.raises(UserError, match=r"a.json:1: pos: no positive and no teacher_scores"):
        TrainDataset([rf], default_task="tool")


# ---------------------------------------------------------------- bad input, each one clear error before training
@pytest.mark.parametrize("records, kwargs, message", [
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0], "task": "qa"}], {},
     r"a.json:1: teacher_scores: 1 scores for 2 keys"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0, math.nan], "task": "qa"}], {},
     r"a.json:1: teacher_scores: item 1 is NaN"),
    ([{"query": "q", "pos": ["p"], "task": "chat", "teacher_scores": [1.0]}], {},
     r"a.json:1: history: chat records need a non-empty history"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0, 0.0]}], {"default_task": "chat"},
     r"a.json:1: history: chat records need a non-empty history"),
    ([{"query": "q", "pos": ["p"], "task": "summarise"}], {}, r"a.json:1: task: unknown task 'summarise'"),
    ([{"query": "q", "pos": ["p"]}], {"default_task": "summarise"}, r"--default_task: unknown task 'summarise'"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "task": "tool"}, {"query": "r", "pos": ["p"], "neg": ["n"], "task": "qa"}],
     {}, r"a.json:2: task: 'qa' differs from 'tool' \(.*a.json:1\): a training file holds one task"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "teacher_scores": [1.0, 0.0], "task": "qa"},
      {"query": "r", "pos": ["p"], "neg": ["n"], "task": "qa"}], {},
     r"a.json:2: teacher_scores: missing while 1 other records of this file have them"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "task": "tool"}], {"select_positive": "teacher"},
     r"select_positive 'teacher' \(from cli\) needs teacher_scores and this file has none \(set select_positive first with --select_positive \(or for task 'tool' in --task_config\)\)"),
    ([{"query": "q", "pos": [], "neg": ["a", "b"], "teacher_scores": [0.0, 1.0], "task": "qa"}], {},
     r"a.json:1: pos: no positive for select_positive 'first'"),
    ([{"query": "q", "pos": ["p"], "task": "tool"}], {},
     r"a.json:1: neg: no negatives and no --corpus to draw random ones from"),
    ([{"query": "q", "pos": ["p"], "teacher_scores": [1.0], "task": "qa"}], {},
     r"a.json:1: neg: no negatives left to pair with teacher_scores"),
    ([{"query": "q", "pos_index": [1], "neg": ["n"], "task": "tool"}], {},
     r"a.json:1: pos_index/neg_index: keys given as corpus rows but no --corpus"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "task": "icl"}], {},
     r"task 'icl' has contrastive_weight 0 \(from recipe\) but its records have no teacher_scores: nothing to learn .*with --contrastive_weight \(or for task 'icl' in --task_config\)"),
    ([{"query": "q", "pos": ["p"], "neg": ["n"], "task": "qa"}], {"contrastive_weight": 0.0},
     r"task 'qa' has contrastive_weight 0 \(from cli\) .* with --contrastive_weight"),
])
def test_bad_input_is_one_clear_error(tmp_path, records, kwargs, message):
    path = tmp_path / "a.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    kwargs = {"train_group_size": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        TrainDataset([path], **kwargs)


def test_corpus_index_out_of_range(tmp_path):
    path = write(tmp_path, "a.json", [{"query": "q", "pos_index": [0], "neg_index": [7], "task": "tool"}])
    with pytest.raises(UserError, match=r"a.json:1: pos_index/neg_index: row 7 is beyond the corpus \(3 rows\)"):
        TrainDataset([path], corpus=Corpus.from_texts(["a", "b", "c"]), train_group_size=2)


def test_missing_train_path(tmp_path):
    with pytest.raises(UserError, match=r"--train_data: .*nothing.json: file not found"):
        TrainDataset([tmp_path / "nothing.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"--train_data: .*empty: directory holds no"):
        TrainDataset([tmp_path / "empty"])


# ---------------------------------------------------------------- the shipped toy files
def test_every_toy_item_keeps_keys_and_scores_aligned(toy_dir):
    ds = TrainDataset([toy_dir], train_group_size=8)
    originals = {}
    for f, path in enumerate(ds.paths):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            keys = r["history"] if "history" in r else r["pos"] + r["neg"]
            originals.setdefault(f, []).append(Counter(zip(keys, r.get("teacher_scores") or [None] * len(keys))))
    for epoch in range(2):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            f, row = ds.locate(index)
            assert len(item["keys"]) == 8 and item["dataset"] == f
            pairs = Counter(zip(item["keys"], item["teacher_scores"] or [None] * 8))
            assert set(pairs) <= set(originals[f][row]), (item["task"], index)
            assert (item["teacher_scores"] is None) == (item["task"] in ("tool", "convsearch"))
