"""Long-range LM on code: the record builder, scoring by token ids, eval_lm and the reliability measures.

A tiny random Llama with SmolLM2's tokenizer stands in for the LM (fast); the real SmolLM2 checks are slow-marked.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llm_embedder.lrlm import fitted, metrics
from llm_embedder.lrlm.build import BuildParams, build, python_files
from llm_embedder.lrlm.score import lm_input, score_key_sets
from test_lm_fixtures import one_torch_thread, reference_score, tiny_lm, tiny_lm_dir  # noqa: F401  (fixtures)


def _module(i: int) -> str:
    parts = [f'"""Module {i}."""\n\nimport os\n\n']
    for j in range(6):
        parts.append(f"def helper_{i}_{j}(value, scale={j}):\n    total = value * scale + {i}\n"
                     f"    for step in range({j + 2}):\n        total += step\n    return total\n\n\n")
    parts.append(f"class Widget{i}:\n    def __init__(self):\n        self.items = []\n\n"
                 f"    def add(self, item):\n        self.items.append(item)\n\n\n")
    for j in range(6):
        parts.append(f"def use_{i}_{j}(x):\n    w = Widget{i}()\n    w.add(helper_{i}_{j}(x))\n"
                     f"    return os.path.join(str(x), str(helper_{i}_{(j + 1) % 6}(x, {j})))\n\n\n")
    return "".join(parts)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("src")
    for i in range(6):
        (d / f"mod{i}.py").write_text(_module(i))
    (d / "notes.txt").write_text("not python")
    return d


PARAMS = dict(chunk_tokens=16, context_chunks=2, n_candidates=4, min_candidates=2, test_files=2, valid_files=1,
              max_targets={"train": 12, "valid": 4, "test": 6})


def _convert(source_dir, out, tiny_lm_dir, *extra):
    from llm_embedder.convert.lrlm import main

    args = [str(source_dir), "--output_dir", str(out), "--tokenizer", str(tiny_lm_dir), "--chunk_tokens", "16",
            "--n_candidates", "4", "--min_candidates", "2", "--test_files", "2", "--valid_files", "1",
            "--max_train_targets", "12", "--max_valid_targets", "4", "--max_test_targets", "6", *extra]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def built(source_dir, tiny_lm_dir, tmp_path_factory):
    return _convert(source_dir, tmp_path_factory.mktemp("lrlm"), tiny_lm_dir)


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_builder_is_deterministic_and_records_validate(source_dir, built, tiny_lm, tmp_path, tiny_lm_dir):
    again = _convert(source_dir, tmp_path / "again", tiny_lm_dir)
    for split in ("train", "valid", "test"):
        assert (built / f"{split}.json").read_bytes() == (again / f"{split}.json").read_bytes()
    from llm_embedder.validate import main as validate

    assert validate([str(built / f"{s}.json") for s in ("train", "valid", "test")]) == 0
    meta = json.loads((built / "train.meta.json").read_text())
    assert meta["params"]["chunk_tokens"] == 16 and meta["params"]["targets"] == "defref"
    records = _read(built / "train.json")
    assert records and all(r["task"] == "lrlm" and r["pos"] == [] for r in records)
    tok = tiny_lm.tokenizer
    for r in records:
        file_ids = tok((source_dir / r["source"]).read_text(), add_special_tokens=False)["input_ids"]
        t, L = r["target_chunk"], 16
        assert r["answer_ids"] == file_ids[t * L:(t + 1) * L] and r["query_ids"] == file_ids[(t - 1) * L:t * L]
        for (s, e), ids in zip(r["key_spans"], r["key_ids"]):
            assert ids == file_ids[s:e] and e <= (t - 1) * L  # keys end before the context
        name = r["privileged_name"]
        assert name in r["answers"][0] and f"{'class' if name[0].isupper() else 'def'} {name}" in \
            tok.decode(file_ids[r["key_spans"][r["privileged_key"]][0]:r["key_spans"][r["privileged_key"]][1] + 8])


def test_block_unit_keys_are_whole_definitions(source_dir, tiny_lm_dir, tmp_path):
    out = _convert(source_dir, tmp_path, tiny_lm_dir, "--candidate_unit", "block", "--key_max_tokens", "48")
    records = _read(out / "train.json")
    assert records
    for r in records:
        assert all(k.lstrip().startswith(("def ", "class ")) for k in r["neg"])


def test_no_test_file_text_reaches_training(built):
    sources = {s: {r["source"] for r in _read(built / f"{s}.json")} for s in ("train", "valid", "test")}
    assert sources["test"] and not (sources["test"] & (sources["train"] | sources["valid"]))
    meta = {s: set(json.loads((built / f"{s}.meta.json").read_text())["files"]) for s in ("train", "test")}
    assert not meta["train"] & meta["test"]
    test_answers = {tuple(r["answer_ids"]) for r in _read(built / "test.json")}
    for r in _read(built / "train.json") + _read(built / "valid.json"):
        assert tuple(r["answer_ids"]) not in test_answers


def test_scoring_by_ids_equals_scoring_the_decoded_text(built, tiny_lm):
    from llm_embedder.lm.scorer import LMScorer

    tok, sep = tiny_lm.tokenizer, json.loads((built / "train.meta.json").read_text())["separator_ids"]
    records = _read(built / "train.json")[:4]
    sets = [[(), (0,)] for _ in records]
    results = score_key_sets(records, sets, sep, LMScorer(tiny_lm.model), 4096, progress=False)
    checked = 0
    for r, res in zip(records, results):
        for keys in ((), (0,)):
            prompt, target = lm_input(r, keys, sep)
            text = tok.decode(prompt + target)
            if tok(text, add_special_tokens=False)["input_ids"] != prompt + target:
                continue  # this tokenizer does not round-trip the text: ids are the only exact input
            retok = tok(text, add_special_tokens=False)["input_ids"]
            ref = reference_score(tiny_lm.model, retok[:len(prompt)], retok[len(prompt):])
            assert sum(res[keys]) / len(res[keys]) == pytest.approx(ref, abs=1e-4)
            checked += 1
    assert checked >= 4


class _Killed(RuntimeError):
    pass


class _KillAfter:
    """Wraps a scorer and raises after ``n`` batches (a kill between two checkpoints)."""

    def __init__(self, scorer, n):
        self.scorer, self.n, self.pad_id = scorer, n, scorer.pad_id

    def target_logprobs(self, batch):
        if self.n == 0:
            raise _Killed()
        self.n -= 1
        return self.scorer.target_logprobs(batch)


def test_resume_after_a_kill_gives_identical_output(built, tiny_lm, tmp_path):
    from llm_embedder.lm.scorer import LMScorer

    sep = json.loads((built / "train.meta.json").read_text())["separator_ids"]
    records = _read(built / "train.json")
    sets = [[()] + [(k,) for k in range(len(r["key_ids"]))] for r in records]
    scorer = LMScorer(tiny_lm.model)
    straight = score_key_sets(records, sets, sep, scorer, 600, progress=False)
    partial = tmp_path / "x.partial.jsonl"
    with pytest.raises(_Killed):
        score_key_sets(records, sets, sep, _KillAfter(scorer, 2), 600, partial=partial, progress=False)
    with open(partial, "a") as f:
        f.write('{"99": {"sets": [[0]], "logp')  # a line torn by the kill
    resumed = score_key_sets(records, sets, sep, _KillAfter(scorer, 10 ** 6), 600, partial=partial, progress=False)
    assert resumed == straight and len(partial.read_text().splitlines()) > 3


def test_a_partial_file_survives_moving_the_model_but_not_changing_it(built, tiny_lm, tiny_lm_dir, tmp_path):
    """The partial file's fingerprint names the model's files, not the folder holding them: the same LM in
    another checkout's cache resumes it; a different LM (another file size) is refused in one line."""
    import shutil

    from llm_embedder.errors import UserError
    from llm_embedder.lm.scorer import LMScorer
    from llm_embedder.lrlm.score import fingerprint

    moved = shutil.copytree(tiny_lm_dir, tmp_path / "elsewhere" / "lm")
    assert fingerprint({"path": str(moved), "dtype": "float32"}, 600) == fingerprint({"path": str(tiny_lm_dir), "dtype": "float32"}, 600)
    assert fingerprint({"path": "smollm2", "dtype": "float32"}, 600) != fingerprint({"path": "other", "dtype": "float32"}, 600)
    sep = json.loads((built / "train.meta.json").read_text())["separator_ids"]
    records = _read(built / "train.json")[:2]
    sets = [[()] for _ in records]
    partial = tmp_path / "x.partial.jsonl"
    scorer = LMScorer(tiny_lm.model)
    first = score_key_sets(records, sets, sep, scorer, 600, partial=partial, progress=False,
                           model_desc={"path": str(tiny_lm_dir), "dtype": "float32"})
    again = score_key_sets(records, sets, sep, _KillAfter(scorer, 0), 600, partial=partial, progress=False,
                           model_desc={"path": str(moved), "dtype": "float32"})  # nothing left to score
    assert again == first
    with open(moved / "config.json", "a") as f:
        f.write("\n")
    with pytest.raises(UserError, match="partial scores of another model"):
        score_key_sets(records, sets, sep, scorer, 600, partial=partial, progress=False,
                       model_desc={"path": str(moved), "dtype": "float32"})


def _eval(argv):
    from llm_embedder.lrlm.eval_cli import main

    return main(argv)


def test_eval_none_is_the_plain_perplexity_given_the_context(built, tiny_lm, tiny_lm_dir, tmp_path):
    assert _eval(["--eval_data", str(built / "test.json"), "--lm", str(tiny_lm_dir), "--retrieval_method", "none",
                  "--output_dir", str(tmp_path)]) == 0
    rows = _read(tmp_path / "none.k1.jsonl")
    records = _read(built / "test.json")
    nll = [-reference_score(tiny_lm.model, r["context_ids"] + r["query_ids"], r["answer_ids"]) for r in records]
    assert [x["nll"] for x in rows] == pytest.approx(nll, abs=1e-4)
    summary = json.loads((tmp_path / "summary.k1.json").read_text())
    assert summary["rows"]["none"]["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)


def test_oracle_is_never_worse_than_any_method(built, tiny_lm_dir, tmp_path):
    from llm_embedder.lrlm.teacher import main as teacher

    assert teacher(["--eval_data", str(built / "test.json"), "--model_name_or_path", str(tiny_lm_dir),
                    "--save_name", "tiny", "--output_dir", str(tmp_path)]) == 0
    scored = tmp_path / "test.scored.tiny.json"
    assert _eval(["--eval_data", str(scored), "--lm", str(tiny_lm_dir), "--retrieval_method", "none", "random", "bm25",
                  "privileged", "oracle", "--output_dir", str(tmp_path / "ev"), "--compare", "oracle", "bm25"]) == 0
    oracle = [x["nll"] for x in _read(tmp_path / "ev" / "oracle.k1.jsonl")]
    for name in ("random", "bm25", "privileged"):
        other = [x["nll"] for x in _read(tmp_path / "ev" / f"{name}.k1.jsonl")]
        assert all(o <= x + 1e-12 for o, x in zip(oracle, other))
    assert any(o < x for o, x in zip(oracle, [x["nll"] for x in _read(tmp_path / "ev" / "random.k1.jsonl")]))
    summary = json.loads((tmp_path / "ev" / "summary.k1.json").read_text())
    assert summary["compare"]["oracle vs bm25"]["mean_gain_nats"] >= 0
    # k=2 is scored by the LM (not in the scored file), resumably
    assert _eval(["--eval_data", str(scored), "--lm", str(tiny_lm_dir), "--retrieval_method", "bm25", "--k", "2",
                  "--output_dir", str(tmp_path / "ev")]) == 0
    assert len(_read(tmp_path / "ev" / "bm25.k2.jsonl")[0]["keys"]) == 2


def test_fitted_ranker_is_fitted_on_train_files_and_ranks_test_targets(built, tiny_lm_dir, tmp_path):
    from llm_embedder.lrlm.teacher import main as teacher

    for split in ("train", "test"):
        assert teacher(["--eval_data", str(built / f"{split}.json"), "--model_name_or_path", str(tiny_lm_dir),
                        "--save_name", "tiny", "--output_dir", str(tmp_path)]) == 0
    assert _eval(["--eval_data", str(tmp_path / "test.scored.tiny.json"), "--lm", str(tiny_lm_dir), "--retrieval_method",
                  "fitted", "oracle", "--fit_data", str(tmp_path / "train.scored.tiny.json"), "--output_dir", str(tmp_path / "ev")]) == 0
    info = json.loads((tmp_path / "ev" / "fitted.json").read_text())
    assert info["targets"] == len(_read(built / "train.json")) and set(info["coefficients"]) == set(fitted.FEATURES)
    fitted_rows = _read(tmp_path / "ev" / "fitted.k1.jsonl")
    oracle = [x["nll"] for x in _read(tmp_path / "ev" / "oracle.k1.jsonl")]
    assert len(fitted_rows) == len(oracle) and all(o <= x["nll"] + 1e-12 for o, x in zip(oracle, fitted_rows))
    # the reliability table gets the cross-fitted ranker when bm25 and a dense encoder are ranked
    assert _eval(["--eval_data", str(tmp_path / "train.scored.tiny.json"), "--reliability", "--retrieval_method", "bm25",
                  "dense", "--model_name_or_path", "minilm", "--output_dir", str(tmp_path / "rel")]) == 0
    rel = json.loads((tmp_path / "rel" / "reliability.json").read_text())
    assert "fitted_model" in rel["rows_second_half"] and "fitted_vs_best" in rel


def _synthetic(n_keys=4, n_tok=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = (-torch.rand(n_keys, n_tok, generator=g) * 3).tolist()
    return {"query_id": seed, "answer_ids": list(range(n_tok)), "key_ids": [[1]] * n_keys, "key_token_logprobs": keys,
            "none_token_logprobs": [-3.0] * n_tok, "teacher_scores": [sum(k) / n_tok for k in keys], "privileged_key": 1}


def test_cross_fitted_oracle_never_sees_the_half_it_is_scored_on():
    records = [_synthetic(seed=s) for s in range(20)]
    base = metrics.reliability(records, {})
    picks = [max(range(4), key=lambda j: sum(r["key_token_logprobs"][j][:4])) for r in records]
    expected = [-sum(r["key_token_logprobs"][p][4:]) / 4 for r, p in zip(records, picks)]
    assert base["per_target"]["cross_fitted_oracle"] == pytest.approx(expected)
    # make the second half of every OTHER key perfect: the cross-fitted pick must not move
    for r, p in zip(records, picks):
        for j in range(4):
            if j != p:
                r["key_token_logprobs"][j][4:] = [0.0] * 4
    moved = metrics.reliability(records, {})
    assert moved["per_target"]["cross_fitted_oracle"] == pytest.approx(expected)
    assert moved["rows_second_half"]["in_sample_oracle"]["mean_nll"] == 0.0


def test_bad_input_is_one_clear_line_before_any_model_loads(tmp_path, built, source_dir, tiny_lm_dir, monkeypatch, capsys):
    import llm_embedder.lm.loading as loading
    from llm_embedder.convert.lrlm import main as convert
    from llm_embedder.resources import LM_ALIASES, ModelAlias

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    cases = [
        (convert, [str(empty), "--output_dir", str(tmp_path / "o"), "--tokenizer", str(tiny_lm_dir)], "holds no .py files"),
        (convert, [str(source_dir), "--output_dir", str(tmp_path / "o"), "--tokenizer", str(tiny_lm_dir), "--chunk_tokens", "1024"],
         "beyond the LM's 2048 positions"),
        (_eval, ["--eval_data", str(built / "test.json"), "--lm", str(tiny_lm_dir), "--k", "5", "--retrieval_method", "bm25",
                 "--output_dir", str(tmp_path / "e")], "--k 5 is larger than the smallest candidate pool (4 keys)"),
    ]
    cases.append((convert, [str(source_dir), "--output_dir", str(tmp_path / "o8"), "--tokenizer", str(tiny_lm_dir),
                            "--chunk_tokens", "8", "--targets", "defref", "--test_files", "2", "--valid_files", "1"],
                  "split: no defref targets in its files with --chunk_tokens 8"))
    cases.append((_eval, ["--eval_data", str(built / "test.json"), "--lm", str(tiny_lm_dir), "--retrieval_method", "fitted",
                          "--output_dir", str(tmp_path / "e")], "--retrieval_method fitted and --fit_data"))
    cases.append((_eval, ["--eval_data", str(built / "test.json"), "--lm", str(tiny_lm_dir), "--retrieval_method", "fitted",
                          "--fit_data", str(built / "test.json"), "--output_dir", str(tmp_path / "e")],
                  "shares source files with --eval_data"))
    monkeypatch.setitem(LM_ALIASES, "missing-lm", ModelAlias("no_such_pkg_xyz", "", "pip install no-such-pkg", "m.gguf"))
    cases.append((_eval, ["--eval_data", str(built / "test.json"), "--lm", "missing-lm", "--output_dir", str(tmp_path / "e")],
                  "model package 'no_such_pkg_xyz' is not installed"))
    for main, argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o8").exists()  # a split without targets stops before anything is written


def test_targets_needed_by_hand():
    """ceil((1.96 sd / mean)^2): mean 0.01, sd 0.1 -> 384.16 -> 385; no mean difference or no spread: None."""
    d = [0.01 + 0.1 * x for x in (1, -1)] * 2          # mean 0.01, sample sd 0.1 * sqrt(4/3)
    assert metrics.targets_needed(d) == math.ceil((1.96 * 0.1 * math.sqrt(4 / 3) / 0.01) ** 2)
    assert metrics.targets_needed([0.02, 0.0] * 50) == math.ceil((1.96 * math.sqrt(0.0001 * 100 / 99) / 0.01) ** 2)
    assert metrics.targets_needed([0.1, -0.1]) is None and metrics.targets_needed([0.05, 0.05]) is None
    assert metrics.targets_needed([0.05]) is None
    assert metrics.paired([1.0, 1.0, 1.0], [1.2, 1.0, 1.1])["targets_needed"] == 4  # d = [.2, 0, .1]: (1.96 * .1 / .1)^2 = 3.84


def test_report_chooses_the_recipe_on_valid_and_never_on_test(tmp_path):
    from llm_embedder.lrlm.report import markdown, study

    def rows(split, label, values):
        d = tmp_path / f"eval-{split}"
        d.mkdir(exist_ok=True)
        name = label.replace(":", "_")
        (d / f"{name}.k1.jsonl").write_text("".join(json.dumps({"nll": v}) + "\n" for v in values))

    for split in ("valid", "test"):
        for label, base in (("none", 3.0), ("random", 2.9), ("bm25", 2.8), ("dense:minilm", 2.85), ("privileged", 2.6)):
            rows(split, label, [base + 0.01 * i for i in range(10)])
    # kl wins on valid, contrastive (a baseline, never chosen) on test: the report must pick kl
    for seed in (1, 2):
        rows("valid", f"dense:kl-s{seed}", [2.70] * 10)
        rows("valid", f"dense:contrastive-s{seed}", [2.75] * 10)
        rows("test", f"dense:kl-s{seed}", [2.70 + 0.01 * i + 0.01 * seed for i in range(10)])
        rows("test", f"dense:contrastive-s{seed}", [2.50] * 10)
    result = study(tmp_path)
    assert result["chosen_recipe_on_valid"] == "kl"
    assert result["best_baseline"] == "trained:contrastive"
    assert result["chosen_vs_best_baseline"]["mean_gain_nats"] < 0 and result["rows"]["trained:kl"]["seeds"] == 2
    assert result["rows"]["trained:kl"]["std_nll"] == pytest.approx(0.01 / math.sqrt(2))
    assert "Chosen on valid: `kl`" in markdown(result)


def test_report_without_a_valid_split_chooses_nothing_and_compares_each_recipe(tmp_path):
    """PubMedQA qa has no valid split: every distilled recipe against the best baseline and `contrastive`."""
    from llm_embedder.lrlm.report import main, markdown, study

    test = tmp_path / "qa"
    test.mkdir()
    for label, values in (("bm25", [2.8, 2.55]), ("dense_minilm", [2.9, 2.6]), ("dense_contrastive-s0", [2.7, 2.6]),
                          ("dense_contrastive-s1", [2.9, 2.6]), ("dense_stable-s0", [2.6, 2.5]),
                          ("dense_stable-s1", [2.6, 2.7])):
        (test / f"{label}.k1.jsonl").write_text("".join(json.dumps({"nll": v}) + "\n" for v in values))
    result = study(tmp_path, test_dir=test, valid_dir=None)
    assert result["chosen_recipe_on_valid"] is None and "chosen_vs_best_baseline" not in result
    assert result["best_baseline"] == "bm25"  # 2.675 against contrastive (seed means [2.8, 2.6]) 2.70, MiniLM 2.75
    stable_vs_contrastive = result["each_recipe_vs_contrastive"]["stable"]  # seed means [2.6, 2.6] vs [2.8, 2.6]
    assert stable_vs_contrastive["mean_gain_nats"] == pytest.approx(0.1)
    assert (stable_vs_contrastive["wins"], stable_vs_contrastive["losses"]) == (1, 0)
    assert "contrastive" not in result["each_recipe_vs_best_baseline"]
    md = markdown(result)
    assert "no recipe is chosen" in md and "- `stable` vs `contrastive`: +0.1000" in md
    # differences [0.2, 0.0]: sd 0.1414, so (1.96 * 0.1414 / 0.1)^2 = 7.68 -> 8 targets
    assert stable_vs_contrastive["targets_needed"] == 8 and "(1 wins / 0 losses; ~8 targets would make this mean significant)" in md
    # every trained row against every other row: stable (seed means [2.6, 2.6]) vs MiniLM [2.9, 2.6] by hand
    vs_minilm = result["pairwise"]["trained:stable"]["dense:minilm"]
    assert vs_minilm["mean_gain_nats"] == pytest.approx(0.15) and (vs_minilm["wins"], vs_minilm["losses"]) == (1, 0)
    assert set(result["pairwise"]["trained:contrastive"]) == {"bm25", "dense:minilm", "trained:stable"}
    assert "| trained:stable | " in md and "+0.1500 [" in md
    assert main([str(tmp_path), "--test_dir", str(test), "--valid_dir", "none", "--png", str(tmp_path / "s.png")]) == 0
    assert json.loads((tmp_path / "study.json").read_text())["each_recipe_vs_contrastive"]["stable"]["wins"] == 1


@pytest.mark.slow
def test_smollm2_scores_by_ids_equal_the_decoded_text_and_none_is_plain_perplexity(tmp_path):
    """The real SmolLM2 on one stdlib file: the ids the builder stores score what the file's text scores."""
    from llm_embedder.lm.loading import load_lm
    from llm_embedder.lm.scorer import LMScorer

    src = tmp_path / "src"
    src.mkdir()
    stdlib = Path(__file__).resolve().parents[1] / "data" / "python_stdlib" / "files"
    for name in ("textwrap.py", "fractions.py", "calendar.py"):
        (src / name).write_text((stdlib / name).read_text())
    lm = load_lm("smollm2")
    params = BuildParams(chunk_tokens=32, n_candidates=4, test_files=1, valid_files=1,
                         max_targets={"train": 2, "valid": 0, "test": 0})
    records = build(python_files(src), src, lm.tokenizer, params)["train"]
    sep = lm.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    sets = [[(), (0,)] for _ in records]
    results = score_key_sets(records, sets, sep, LMScorer(lm.model), 4096, progress=False)
    checked = 0
    for r, res in zip(records, results):
        for keys in ((), (0,)):
            prompt, target = lm_input(r, keys, sep)
            text_ids = lm.tokenizer(lm.tokenizer.decode(prompt + target), add_special_tokens=False)["input_ids"]
            if text_ids == prompt + target:
                ref = reference_score(lm.model, text_ids[:len(prompt)], text_ids[len(prompt):])
                assert sum(res[keys]) / len(res[keys]) == pytest.approx(ref, abs=1e-4)
                checked += 1
    assert checked >= 2


def test_bm25_ranks_a_query_without_words_in_file_order():
    from llm_embedder.lrlm.lexical import bm25_rank

    assert bm25_rank(")) ]", ["def a(): pass", "x = (1, 2)", "class B: pass"]) == [0, 1, 2]
    assert bm25_rank("parse_args", ["x = 1", "def parse_args(): pass"]) == [1, 0]
