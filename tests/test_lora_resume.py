"""LoRA: the saved merged model equals base + saved adapter, and training resumes from a saved adapter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_embedder.errors import UserError
from llm_embedder.modeling.encoder import DenseEncoder
from llm_embedder.training.run import main as run_dense

TOY = "llm-embedder:llm_embedder_toy/qa.json"
TEXTS = ["a query about dense retrieval", "a key about BM25 and inverted indexes", "third text"]


def train(model_dir, out, *extra):
    run_dense(["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--train_data", TOY,
               "--per_device_train_batch_size", "4", "--train_group_size", "3", "--max_steps", "1",
               "--learning_rate", "1e-2", "--query_max_length", "32", "--key_max_length", "32", "--seed", "1",
               "--warmup_ratio", "0", "--use_cpu", "--disable_tqdm", "True", *extra])
    return out


@pytest.mark.slow
def test_merged_equals_adapter_plus_base_and_training_resumes(tiny_bert_nodrop_dir, tmp_path):
    saved = train(tiny_bert_nodrop_dir, tmp_path / "lora", "--lora_rank", "4")
    adapter = saved / "lora_adapter"
    merged = DenseEncoder.from_pretrained(saved).encode(TEXTS, show_progress=False)
    resumed = DenseEncoder.from_pretrained(tiny_bert_nodrop_dir, lora_adapter=adapter)
    assert resumed.lora["rank"] == 4
    np.testing.assert_allclose(resumed.encode(TEXTS, show_progress=False), merged, atol=1e-5)
    base = DenseEncoder.from_pretrained(tiny_bert_nodrop_dir).encode(TEXTS, show_progress=False)
    assert np.abs(base - merged).max() > 1e-3  # guard: the adapter changed the model

    # resume: the saved adapter is the starting point and keeps training
    again = train(tiny_bert_nodrop_dir, tmp_path / "again", "--lora_adapter", str(adapter))
    before, after = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(again / "lora_adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    moved = max(float((after[n] - before[n]).abs().max()) for n in before)
    assert 0 < moved < 0.5, moved  # one more small step from the saved adapter, not from a fresh one

    with pytest.raises(UserError, match="already has LoRA weights merged in"):
        DenseEncoder.from_pretrained(saved, lora_adapter=adapter)
    with pytest.raises(UserError, match="has no adapter_config.json"):
        DenseEncoder.from_pretrained(tiny_bert_nodrop_dir, lora_adapter=tmp_path)
