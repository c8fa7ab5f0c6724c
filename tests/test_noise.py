"""Startup noise (issue 11, point 5): hidden by default, back with --verbose / LLM_EMBEDDER_VERBOSE=1."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_embedder.noise import pop_verbose

PROBE = """
import logging, sys
from llm_embedder.noise import quiet_third_party
quiet_third_party(verbose=sys.argv[1] == "1")
logging.basicConfig(level=logging.INFO)
import datasets, faiss
print("done")
"""
NOISE = ("JAX version", "faiss.loader", "ModuleNotFoundError")


def _run(verbose: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_EMBEDDER_VERBOSE", "DATASETS_VERBOSITY")}
    done = subprocess.run([sys.executable, "-c", PROBE, verbose], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_startup_noise_is_hidden_unless_verbose():
    quiet, loud = _run("0"), _run("1")
    assert [n for n in NOISE if n in quiet] == []
    assert [n for n in NOISE if n not in loud] == []  # the probe really triggers each line: the check can fail


def test_pop_verbose(monkeypatch):
    monkeypatch.delenv("LLM_EMBEDDER_VERBOSE", raising=False)
    assert pop_verbose(["train", "--verbose", "--x", "1"]) == (["train", "--x", "1"], True)
    assert pop_verbose(["train"]) == (["train"], False)
    monkeypatch.setenv("LLM_EMBEDDER_VERBOSE", "1")
    assert pop_verbose(["train"]) == (["train"], True)


def test_deepspeed_accelerator_line_is_dropped_unless_verbose(monkeypatch):
    """DeepSpeed logs through its own stdout handler (no propagation), so a filter on its logger is the lever."""
    import logging

    from llm_embedder.noise import quiet_third_party

    monkeypatch.delenv("LLM_EMBEDDER_VERBOSE", raising=False)
    quiet_third_party(verbose=False)
    logger = logging.getLogger("DeepSpeed")
    record = lambda msg, level=logging.WARNING: logging.LogRecord("DeepSpeed", level, __file__, 1, msg, None, None)  # noqa: E731
    assert not logger.filter(record("Setting accelerator to CPU. If you have GPU ..."))
    assert logger.filter(record("ZeRO stage 2 enabled"))  # other DeepSpeed messages still show
    assert logger.filter(record("Setting accelerator to CPU", logging.ERROR))
    monkeypatch.setenv("LLM_EMBEDDER_VERBOSE", "1")
    assert logger.filter(record("Setting accelerator to CPU. If you have GPU ..."))


def test_fast_tokenizer_advice_is_hidden_unless_verbose(minilm_dir, monkeypatch, capsys):
    import logging

    from transformers import AutoTokenizer

    from llm_embedder.noise import quiet_third_party

    name = "transformers.tokenization_utils_base"
    before = logging.getLogger(name).level
    monkeypatch.delenv("LLM_EMBEDDER_VERBOSE", raising=False)
    quiet_third_party(verbose=False)
    try:
        assert not logging.getLogger(name).isEnabledFor(logging.WARNING)
        tok = AutoTokenizer.from_pretrained(minilm_dir)
        tok.pad(tok(["a b c", "d"]), padding=True)  # would print "You're using a BertTokenizerFast tokenizer ..."
        assert "BertTokenizerFast" not in capsys.readouterr().err
    finally:
        logging.getLogger(name).setLevel(before)
