"""run_lm_score.py end to end on a tiny random LM: output rows and meta, policies, resume, errors."""
from __future__ import annotations

import json
import pytest

from llm_embedder.errors import UserError
from llm_embedder.lm import run as lm_run
from llm_embedder.lm.scorer import LMScorer
from llm_embedder.paths import sidecar_corpus
from llm_embedder.resources import resolve_data_path
from test_lm_fixtures import QA_ROWS, one_torch_thread, reference_score, tiny_lm, tiny_lm_dir, write_jsonl  # noqa: F401


def score(argv) -> None:
    lm_run.run(lm_run.build_parser().parse_args([str(a) for a in argv]))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def qa_file(tmp_path):
    return write_jsonl(tmp_path / "train.json", QA_ROWS)


def test_output_keeps_rows_in_order_and_adds_aligned_teacher_scores(tmp_path, qa_file, tiny_lm_dir, tiny_lm):
    score(["--eval_data", qa_file, "--model_name_or_path", tiny_lm_dir, "--save_name", "tiny", "--token_budget", "1024",
           "--max_length", "64"])
    out = tmp_path / "train.scored.tiny.json"
    rows = read_jsonl(out)
    assert [{k: v for k, v in r.items() if k != "teacher_scores"} for r in rows] == QA_ROWS
    assert [len(r["teacher_scores"]) for r in rows] == [4, 3, 2]

    # independent recomputation of one key's score: mean over its two answers of the mean answer log-prob
    tok = tiny_lm.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    row = QA_ROWS[0]
    prompt = enc(f"Knowledge: {row['neg'][1]}\nQuestion: {row['query']}\nAnswer:")
    expected = [reference_score(tiny_lm.model, prompt, enc(" " + a)) for a in row["answers"]]
    assert rows[0]["teacher_scores"][2] == pytest.approx(sum(expected) / 2, abs=1e-4)

    meta = json.loads((tmp_path / "train.scored.tiny.meta.json").read_text())
    assert meta["normalisation"] == "mean log-probability per answer token"
    assert meta["answer_policy"] == "mean"
    assert meta["templates"]["qa"]["prompt"] == "Knowledge: {key}\nQuestion: {query}\nAnswer:"
    assert meta["lm"]["path"] == str(tiny_lm_dir) and meta["lm"]["dtype"] == "float32"
    assert meta["counts"]["pairs"] == 4 * 2 + 3 + 2 and meta["counts"]["rows"] == 3
    assert meta["max_length"] == 64 and meta["versions"]["llm_embedder"]
    assert not (tmp_path / "train.scored.tiny.json.partial").exists()  # removed once the output is complete


def test_answer_policy_max_takes_the_best_answer(tmp_path, qa_file, tiny_lm_dir):
    for policy in ("mean", "max"):
        score(["--eval_data", qa_file, "--model_name_or_path", tiny_lm_dir, "--save_name", policy,
               "--answer_policy", policy, "--max_queries", "1"])
    mean = read_jsonl(tmp_path / "train.scored.mean.json")[0]["teacher_scores"]
    best = read_jsonl(tmp_path / "train.scored.max.json")[0]["teacher_scores"]
    # with two answers a, b: mean = (a+b)/2 and max = max(a, b), so max >= mean, equality only if a == b
    assert all(b > m for b, m in zip(best, mean))


def test_query_likelihood_with_corpus_indices_and_max_keys(tmp_path, tiny_lm_dir, tiny_lm):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(5)])
    rows = [{"query": "a claim", "pos_index": [3], "neg_index": [0, 4, 1], "pos_ids": ["d3"]}]
    data = write_jsonl(tmp_path / "claims.json", rows)
    score(["--eval_data", data, "--corpus", corpus, "--key_template", "{title}: {text}", "--template", "query_likelihood",
           "--model_name_or_path", tiny_lm_dir, "--save_name", "ql", "--max_keys", "3", "--bf16"])
    (out,) = read_jsonl(tmp_path / "claims.scored.ql.json")
    assert (out["pos_index"], out["neg_index"], out["pos_ids"], len(out["teacher_scores"])) == ([3], [0, 4], ["d3"], 3)
    meta = json.loads((tmp_path / "claims.scored.ql.meta.json").read_text())
    assert meta["fields_truncated_by_max_keys"] == ["neg_index"] and meta["max_pos"] is None
    assert meta["lm"]["dtype"] == "bfloat16" and meta["corpus"] == "corpus.jsonl"  # beside the output: relative
    tok = tiny_lm.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = enc("Passage: T4: text 4\nPlease write a question/claim based on this passage.\n")
    fp32 = reference_score(tiny_lm.model, prompt, enc("a claim"))
    assert out["teacher_scores"][2] == pytest.approx(fp32, abs=0.1)  # bf16: close, not equal


class Killed(Exception):
    """Stands in for the process being killed in the middle of scoring."""


def test_resume_after_a_kill_rescoring_nothing_twice(tmp_path, qa_file, tiny_lm_dir, monkeypatch):
    common = ["--eval_data", qa_file, "--model_name_or_path", tiny_lm_dir, "--token_budget", "64", "--max_length", "64",
              "--save_every", "2"]
    score(common + ["--save_name", "tiny", "--output_dir", tmp_path / "uninterrupted"])
    expected = (tmp_path / "uninterrupted" / "train.scored.tiny.json").read_bytes()

    real = LMScorer.score_batch
    scored = []

    def dies_after_three_batches(self, sequences):
        if len(scored) >= 3 and dying:
            raise Killed
        scored.append(len(sequences))
        return real(self, sequences)

    monkeypatch.setattr(LMScorer, "score_batch", dies_after_three_batches)
    dying = True
    with pytest.raises(Killed):
        score(common + ["--save_name", "tiny"])
    output = tmp_path / "train.scored.tiny.json"
    assert not output.exists()  # nothing half-written
    saved_lines = sum(len(p.read_text().splitlines()) for p in (tmp_path / "train.scored.tiny.json.partial").glob("scores.*"))
    first_run = sum(scored)
    assert 2 <= saved_lines <= first_run

    dying = False
    score(common + ["--save_name", "tiny"])
    assert output.read_bytes() == expected  # identical to the uninterrupted run
    assert sum(scored) - first_run == 13 - saved_lines  # only the unsaved pairs were scored again
    meta = json.loads((tmp_path / "train.scored.tiny.meta.json").read_text())
    assert meta["counts"]["pairs_resumed_from_partial"] == saved_lines


def test_resume_from_a_copy_of_the_lm_elsewhere_but_not_from_other_weights(tmp_path, qa_file, tiny_lm_dir, monkeypatch):
    """The resume fingerprint follows the LM's files, not its path: the same model in another venv or checkout
    resumes; a model whose files differ is refused."""
    import shutil

    copies = [shutil.copytree(tiny_lm_dir, tmp_path / name) for name in ("venv-a", "venv-b", "venv-c")]
    common = ["--eval_data", qa_file, "--save_name", "tiny", "--token_budget", "64", "--max_length", "64",
              "--save_every", "1", "--output_dir", tmp_path / "out"]
    real, calls = LMScorer.score_batch, []

    def dies_once(self, sequences):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real(self, sequences)

    monkeypatch.setattr(LMScorer, "score_batch", dies_once)
    with pytest.raises(Killed):
        score(common + ["--model_name_or_path", copies[0]])
    config = copies[2] / "config.json"
    config.write_text(config.read_text() + "\n")  # a changed file (its size differs), still a loadable model
    with pytest.raises(UserError, match="partial scores of a different run"):
        score(common + ["--model_name_or_path", copies[2]])
    score(common + ["--model_name_or_path", copies[1]])  # the same files at another path: resumes
    meta = json.loads((tmp_path / "out" / "train.scored.tiny.meta.json").read_text())
    assert meta["counts"]["pairs_resumed_from_partial"] >= 1


def test_partial_scores_of_other_work_are_refused(tmp_path, qa_file, tiny_lm_dir, monkeypatch):
    common = ["--eval_data", qa_file, "--model_name_or_path", tiny_lm_dir, "--save_name", "tiny", "--token_budget", "64",
              "--max_length", "64", "--save_every", "1"]
    calls = []

    def dies(self, sequences):
        calls.append(1)
        if len(calls) > 1:
            raise Killed
        return [0.0] * len(sequences)

    monkeypatch.setattr(LMScorer, "score_batch", dies)
    with pytest.raises(Killed):
        score(common)
    with pytest.raises(UserError, match="partial scores of a different run"):
        score(common + ["--key_max_length", "8"])  # different inputs to the LM


def test_cli_prints_one_line_and_exits_2_before_loading_the_model(tmp_path, tiny_lm_dir, monkeypatch, capsys):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is bad")

    monkeypatch.setattr(lm_run, "load_model", must_not_load)
    bad = write_jsonl(tmp_path / "bad.json", [QA_ROWS[0], {"query": "q?", "task": "qa", "pos": ["k"]}])
    with pytest.raises(SystemExit) as exit_:
        lm_run.main(["--eval_data", str(bad), "--model_name_or_path", str(tiny_lm_dir), "--save_name", "x"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: answers: missing or empty, but template 'qa' scores " \
                                              "p(answer | prompt) (pass --template query_likelihood to score p(query | key) instead)"
    assert not (tmp_path / "bad.scored.x.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--max_length", "0"], "--max_length: must be at least 1"),
    (["--max_pos", "0"], "--max_pos: must be at least 1"),
    (["--token_budget", "100"], "--token_budget (100) must be at least --max_length (1024)"),
    (["--save_every", "-1"], "--save_every: must be 0"),
    (["--key_template", "{title}"], "--key_template: formats corpus rows, but there is no --corpus"),
    (["--model_name_or_path", "no/such/dir"], "--model_name_or_path: 'no/such/dir' is neither"),
    (["--max_length", "4096", "--token_budget", "4096"], "--max_length: 4096 exceeds the LM's 2048 positions"),
])
def test_bad_arguments_name_the_argument(tmp_path, qa_file, tiny_lm_dir, argv, message):
    with pytest.raises(UserError) as err:
        score(["--eval_data", qa_file, "--save_name", "x", "--model_name_or_path", tiny_lm_dir, *argv])
    assert message in str(err.value)


def test_aggregate_policies_by_hand():
    from llm_embedder.lm.pairs import Pair, RowPlan, ScoringPlan
    from llm_embedder.lm.templates import get_template

    rp = RowPlan(0, get_template("qa"), ["k0", "k1"], ["a", "b", "c"], "q", "", "pos+neg")
    pairs = [Pair(0, k, a, [1], [2]) for k in range(2) for a in range(3)]
    plan = ScoringPlan([{}], [rp], pairs, {})
    values = [-1.0, -2.0, -6.0, -0.5, -0.25, -3.0]
    assert lm_run.aggregate(plan, values, "mean") == [[-3.0, pytest.approx(-3.75 / 3)]]
    assert lm_run.aggregate(plan, values, "max") == [[-1.0, -0.25]]


@pytest.mark.slow
def test_resume_after_a_real_sigkill(tmp_path, toy_dir, tiny_lm_dir, repo_root):
    """A scoring process is SIGKILLed once it has saved some pairs; the rerun resumes and equals a clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "qa.json"
    data.write_bytes((toy_dir / "qa.json").read_bytes())
    common = ["--eval_data", data, "--model_name_or_path", tiny_lm_dir, "--max_queries", "4", "--max_keys", "30",
              "--max_length", "256", "--token_budget", "512", "--save_every", "8", "--save_name", "tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(repo_root / "run_lm_score.py"), *map(str, common)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "qa.scored.tiny.json.partial"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if sum(len(p.read_bytes().splitlines()) for p in partial.glob("scores.*.jsonl")) >= 16:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (tmp_path / "qa.scored.tiny.json").exists()
    saved = sum(len(p.read_bytes().splitlines()) for p in partial.glob("scores.*.jsonl"))
    assert 16 <= saved < 120

    score(common)
    score(common[:-1] + ["clean"])
    assert (tmp_path / "qa.scored.tiny.json").read_text() == (tmp_path / "qa.scored.clean.json").read_text()
    meta = json.loads((tmp_path / "qa.scored.tiny.meta.json").read_text())
    assert meta["counts"]["pairs_resumed_from_partial"] >= 16


def test_rows_without_task_are_refused_before_the_lm_is_located(tmp_path, monkeypatch, capsys):
    """--template auto on task-less rows: the error comes before the LM is found or converted (a first
    run of an alias converts GGUF first), and it says how to give the rows a task (issue 11, point 1)."""
    def must_not_locate(*args, **kwargs):
        raise AssertionError("the LM was located although every row lacks a task")

    monkeypatch.setattr(lm_run, "local_lm_dir", must_not_locate)
    rows = [{k: v for k, v in row.items() if k != "task"} for row in QA_ROWS]
    bad = write_jsonl(tmp_path / "notask.json", rows)
    with pytest.raises(SystemExit) as exit_:
        lm_run.main(["--eval_data", str(bad), "--save_name", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: task: missing" in err and "convert beir --task qa" in err and "--template NAME" in err


def test_the_scored_sidecar_names_its_corpus_so_that_it_survives_a_moved_checkout(tmp_path, tiny_lm_dir):
    """A corpus under the shipped data is named ``llm-embedder:...`` (an absolute path into one checkout broke
    training from a scored file once that checkout was gone), one beside the output relatively, others absolutely;
    training then finds the same corpus through the sidecar."""
    rows = [{"query": "a question", "task": "qa", "pos_index": [0], "neg_index": [1], "answers": ["yes"]}]
    (tmp_path / "elsewhere").mkdir()
    elsewhere = write_jsonl(tmp_path / "elsewhere" / "corpus.jsonl", [{"_id": f"d{i}", "text": f"text {i}"} for i in range(3)])
    for corpus, want in (("llm-embedder:pubmedqa/corpus.jsonl", "llm-embedder:pubmedqa/corpus.jsonl"),
                         (str(elsewhere), str(elsewhere.resolve()))):
        out = tmp_path / want.replace("/", "_").replace(":", "_")
        out.mkdir()
        data = write_jsonl(out / "train.json", rows)
        score(["--eval_data", data, "--corpus", corpus, "--template", "qa", "--model_name_or_path", tiny_lm_dir,
               "--save_name", "s"])
        assert json.loads((out / "train.scored.s.meta.json").read_text())["corpus"] == want
        assert sidecar_corpus(out / "train.scored.s.json") == resolve_data_path(corpus).resolve()
    elsewhere.unlink()  # the corpus moved away: reading the sidecar says which sidecar and field to fix
    with pytest.raises(UserError, match=r"train.scored.s.meta.json: corpus: .*elsewhere/corpus.jsonl does not exist"):
        sidecar_corpus(out / "train.scored.s.json")


def test_a_mined_file_needs_neither_corpus_nor_key_template(tmp_path, tiny_lm_dir):
    """The mining sidecar names the corpus and the key template; scoring takes both from it (issue 11, point 6)."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(5)])
    data = write_jsonl(tmp_path / "train.neg.bm25.json", [{"query": "a claim", "task": "qa", "pos_index": [3], "neg_index": [0, 4]}])
    (tmp_path / "train.neg.bm25.meta.json").write_text(json.dumps({"corpus": "corpus.jsonl", "key_template": "{title}: {text}"}))
    score(["--eval_data", data, "--template", "query_likelihood", "--model_name_or_path", tiny_lm_dir, "--save_name", "s"])
    meta = json.loads((tmp_path / "train.neg.bm25.scored.s.meta.json").read_text())
    assert meta["corpus"] == "corpus.jsonl" and meta["key_template"] == "{title}: {text}"
    score(["--eval_data", data, "--template", "query_likelihood", "--model_name_or_path", tiny_lm_dir, "--save_name", "t",
           "--corpus", corpus])  # an explicit --corpus means the sidecar's template is not assumed
    assert json.loads((tmp_path / "train.neg.bm25.scored.t.meta.json").read_text())["key_template"] is None
