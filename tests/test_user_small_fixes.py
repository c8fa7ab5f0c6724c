"""Issue 11, point 6: the small surprises on a new user's path, each pinned by a test that failed before."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_embedder.convert.beir import main as beir_main
from llm_embedder.validate import main as validate_main
from test_convert import make_beir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_run_files_embeddings_records_and_saved_models_are_0644(tmp_path, tiny_bert_dir, umask_022):
    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.retrieval.encode import save_npy
    from llm_embedder.retrieval.metrics import write_trec_run
    from llm_embedder.retrieval.search_cli import write_run
    from llm_embedder.schema import write_records

    files = [write_trec_run(tmp_path / "a.trec", {"q": {"d1": 1.0, "d2": 0.5}}),
             save_npy(tmp_path / "e.npy", np.zeros((2, 3), dtype=np.float32)),
             write_records(tmp_path / "r.json", [{"query": "q"}])]
    write_run(tmp_path / "s.tsv", ["q"], ["d0", "d1"], np.array([[1.0, 0.5]]), np.array([[0, 1]]), "tsv", "t")
    files.append(tmp_path / "s.tsv")
    assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o644" for f in files}
    model = DenseEncoder.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "model")
    assert oct(mode(model)) == "0o755"
    assert oct(mode(model / "model.safetensors")) == "0o644"
    assert all(mode(p) in (0o644, 0o755) for p in model.rglob("*")), {str(p): oct(mode(p)) for p in model.rglob("*")}


def test_report_into_a_closed_pipe_ends_quietly(tmp_path):
    """`llm-embedder report RUN | head` must not end in a BrokenPipeError traceback."""
    history = [{"step": s, "eval_ndcg@10": 0.1 * s, **{f"eval_recall@{k}": 0.01 * k for k in range(1, 3000)}}
               for s in (0, 5)]
    (tmp_path / "metrics.json").write_text(json.dumps({"history": history}))
    cmd = [sys.executable, "-m", "llm_embedder.cli", "report", str(tmp_path / "metrics.json")]
    # report | head -n 2, piped without a shell: head exits after two lines and closes the pipe
    report = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = subprocess.run(["head", "-n", "2"], stdin=report.stdout, capture_output=True, text=True, timeout=60)
    report.stdout.close()
    stderr = report.stderr.read()
    report.wait(timeout=60)
    report.stderr.close()
    assert head.stdout.count("\n") == 2
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_validate_says_a_beir_folder_or_file_is_not_a_schema_file(tmp_path, capsys):
    beir = make_beir(tmp_path / "mine", {"train": "q1\td1\t1\n"})
    for target, words in [(beir, "is a BEIR folder"), (beir / "corpus.jsonl", "is a BEIR corpus file"),
                          (beir / "queries.jsonl", "is a BEIR queries file")]:
        assert validate_main([str(target)]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1, out  # one line, not one 'query: missing' per row
        assert words in out[0] and f"llm-embedder convert beir {beir} --output_dir DIR" in out[0]


def test_bad_qrels_in_every_split_are_reported_at_once(tmp_path, capsys):
    beir = make_beir(tmp_path / "b", {"train": "q1\tnope\t1\n", "test": "q2\td0\tx\n", "dev": "q1\td1\t1\n"})
    with pytest.raises(SystemExit):
        beir_main([str(beir), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "qrels/train.tsv:1: corpus-id: 'nope'" in err and "qrels/test.tsv:1: score: 'x' is not a number" in err
    assert not (tmp_path / "out").exists()  # nothing written, not even the good split


def _code_block(path: Path, after: str, language: str = "python") -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"```{language}", text.index(after)) + len(f"```{language}")
    return text[start:text.index("```", start)].strip()


def _run_dense_flags(text: str) -> dict[str, tuple[str, ...]]:
    """The flags of the first ``run_dense.py`` command in a shell text (continued lines joined, ``${VAR:-default}``
    read as its default), without the ones that only name the output folder."""
    lines = text[text.index("run_dense.py"):].splitlines()
    end = next(i for i, line in enumerate(lines) if not line.rstrip().endswith("\\"))
    command = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", " ".join(line.rstrip().rstrip("\\") for line in lines[:end + 1]))
    flags: dict[str, list[str]] = {}
    for token in shlex.split(command)[1:]:
        if token.startswith("--"):
            name = token
            flags[name] = []
        else:
            flags[name].append(token)
    return {k: tuple(v) for k, v in flags.items() if k not in ("--output_dir", "--overwrite_output_dir")}


def test_readme_cli_training_is_the_quickstarts_command(repo_root):
    """The README says its CLI block "is what the quickstart runs": the same flags and values as
    scripts/quickstart.sh with its defaults (it once showed lr 5e-5 without warm-up against the script's 2e-5)."""
    readme = _run_dense_flags(_code_block(repo_root / "README.md", "with the CLI (this is what the quickstart runs)", "bash"))
    quickstart = _run_dense_flags((repo_root / "scripts" / "quickstart.sh").read_text(encoding="utf-8"))
    assert quickstart["--learning_rate"] == ("1e-4",) and "--eval_on_start" in quickstart  # the parse saw the script
    assert readme == quickstart


def test_readme_and_training_doc_show_the_same_python_training(repo_root):
    """One way to train and save from Python, the same in README and docs/training.md."""
    readme = _code_block(repo_root / "README.md", "The same from Python")
    training = _code_block(repo_root / "docs" / "training.md", "## From Python")
    assert readme == training
    assert "trainer.save_model(" in readme


def test_python_training_example_uses_the_quickstarts_recipe(repo_root):
    """The Python example's comment says it is the quickstart's recipe: its RetrievalTrainingArguments keywords
    equal the quickstart's flags of the same name (the example once trained at HF's default rate and τ 0.01)."""
    import ast

    tree = ast.parse(_code_block(repo_root / "README.md", "The same from Python"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "RetrievalTrainingArguments")
    example = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg != "output_dir"}
    quickstart = _run_dense_flags((repo_root / "scripts" / "quickstart.sh").read_text(encoding="utf-8"))
    assert set(example) == {"per_device_train_batch_size", "num_train_epochs", "learning_rate", "warmup_ratio", "cos_temperature"}
    for name, value in example.items():
        assert float(quickstart["--" + name][0]) == float(value), name
