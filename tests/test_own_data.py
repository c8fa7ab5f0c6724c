"""The own-data walkthrough (issue 11): every command of docs/own-data.md through the installed
`llm-embedder` command from a folder outside the repository, and docs/python-api.md's block through the
Python API, both on a generated tiny BEIR folder. `minilm` / `smollm2` are swapped for tiny random models
(same tokenizers) so the path, not the models, is what takes the time."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from own_data_helpers import make_tiny_beir
from test_lm_fixtures import one_torch_thread, tiny_lm_dir  # noqa: F401

pytestmark = pytest.mark.slow
NOISE = ("Traceback", "JAX version", "Setting accelerator to CPU", "faiss.loader", "encoding querys")


def doc_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def with_models(text: str, encoder: Path, lm: Path) -> str:
    """The documented model names replaced by the tiny models, only where a model is named."""
    text = re.sub(r"(--model_name_or_path|--query_encoder) minilm\b", rf"\1 {encoder}", text)
    text = re.sub(r"(--model_name_or_path) smollm2\b", rf"\1 {lm}", text)
    return text.replace('"minilm"', f'"{encoder}"').replace('"smollm2"', f'"{lm}"')


def commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture
def outside(tmp_path, repo_root) -> Path:
    folder = tmp_path / "elsewhere"
    assert not folder.resolve().is_relative_to(repo_root.resolve())
    make_tiny_beir(folder / "my-data")
    return folder


def check_outputs(work: Path) -> None:
    rows = [json.loads(line) for line in (work / "train.neg.dense.scored.lm.json").read_text().splitlines()]
    assert len(rows) == 8 and {r["task"] for r in rows} == {"qa"}
    assert all(len(r["teacher_scores"]) == len(r["pos_index"]) + len(r["neg_index"]) == 4 for r in rows)
    log = [json.loads(line) for line in (work / "model" / "train_log.jsonl").read_text().splitlines()]
    assert any("distill_qa" in r and r["distill_qa"] > 0 for r in log)  # distillation ran, and it is on file


def test_walkthrough_with_the_installed_command(outside, repo_root, tiny_bert_nodrop_dir, tiny_lm_dir):
    exe = Path(sys.executable).parent / "llm-embedder"
    if not exe.is_file():
        pytest.skip("the llm-embedder console script is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(repo_root / "src"), "LLM_EMBEDDER_CACHE": str(outside / "cache"),
           "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("LLM_EMBEDDER_VERBOSE", None)
    ran = []
    for block in doc_blocks(repo_root / "docs" / "own-data.md", "bash"):
        for line in commands(with_models(block, tiny_bert_nodrop_dir, tiny_lm_dir)):
            command, _, comment = line.partition("  #")
            expected = 1 if "exits 1" in comment else 0
            done = subprocess.run(["bash", "-c", command], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
            output = done.stdout + done.stderr
            assert done.returncode == expected, f"{command}\n{output[-3000:]}"
            assert not [n for n in NOISE if n in output], f"{command}\n{output[-3000:]}"
            ran.append((command.split()[:2], output))
    steps = {" ".join(c) for c, _ in ran}
    for step in ("llm-embedder convert", "llm-embedder validate", "llm-embedder mine", "llm-embedder score",
                 "llm-embedder train", "llm-embedder evaluate", "llm-embedder report", "python -c"):
        assert step in steps, f"docs/own-data.md lost its '{step}' step"
    assert "is a BEIR folder" in ran[1][1] and "llm-embedder convert beir my-data" in ran[1][1]
    work = outside / "work"
    check_outputs(work)
    assert json.loads((work / "test.eval.tuned.json").read_text())["metrics"]
    assert len(json.loads((work / "model" / "metrics.json").read_text())["history"]) == 2  # before and after
    assert ran[-1][1].strip().endswith(")") and "(1, " in ran[-1][1]  # SentenceTransformer loaded and encoded


def test_walkthrough_with_the_python_api(outside, repo_root, tiny_bert_nodrop_dir, tiny_lm_dir, monkeypatch, capsys):
    (block,) = doc_blocks(repo_root / "docs" / "python-api.md", "python")
    monkeypatch.chdir(outside)
    monkeypatch.setenv("LLM_EMBEDDER_CACHE", str(outside / "cache"))
    code = with_models(block, tiny_bert_nodrop_dir, tiny_lm_dir)
    assert code != block  # the models were swapped: the test does not silently run the real ones
    exec(compile(code, "docs/python-api.md", "exec"), {"__name__": "python_api_doc"})
    out = capsys.readouterr().out
    assert "'negatives': 24" in out and "ndcg@10" in out and "(1, " in out
    work = outside / "work"
    log = [json.loads(line) for line in (work / "model" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("distill_qa", 0) > 0 for r in log)
    assert (work / "model" / "model.safetensors").is_file()
