"""LM scoring with the real SmolLM2 (slow): answer likelihood follows the evidence, batched equals one-at-a-time."""
from __future__ import annotations

import json

import pytest

from llm_embedder.lm import run as lm_run
from llm_embedder.lm.loading import load_lm
from test_lm_fixtures import reference_score, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_lm("smollm2")  # converts the GGUF into the cache on first use (~30 s), then ~3 s


def test_smollm2_scores_the_supporting_passage_highest(tmp_path, smollm2):
    # a made-up fact: the answer can only come from the passage, not from what the LM already knows
    row = {"query": "What is the name of Zorblat's pet dragon?", "answers": ["Fizzwick"], "task": "qa",
           "pos": ["Zorblat keeps a small pet dragon named Fizzwick in his tower."],
           "neg": ["Bananas are elongated, edible fruits produced by several kinds of large herbaceous plants.",
                   "Zorblat keeps a small pet cat named Mimi in his tower."]}
    data = write_jsonl(tmp_path / "capitals.json", [row])
    lm_run.main(["--eval_data", str(data), "--model_name_or_path", "smollm2", "--save_name", "smollm2"])
    (out,) = [json.loads(line) for line in (tmp_path / "capitals.scored.smollm2.json").read_text().splitlines()]
    gold, bananas, cat = out["teacher_scores"]
    assert gold > cat + 2.0 and gold > bananas + 2.0, out["teacher_scores"]

    tok = smollm2.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for key, got in zip(row["pos"] + row["neg"], out["teacher_scores"]):
        prompt = enc(f"Knowledge: {key}\nQuestion: {row['query']}\nAnswer:")
        assert got == pytest.approx(reference_score(smollm2.model, prompt, enc(" Fizzwick")), abs=1e-4)
    meta = json.loads((tmp_path / "capitals.scored.smollm2.meta.json").read_text())
    assert meta["lm"]["alias"] == "smollm2" and meta["lm"]["source"].endswith(".gguf")
