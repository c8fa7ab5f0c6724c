"""The Python API shown in the README: argument dataclass, dataset from BEIR qrels, collator, trainer."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_readme_python_api_trains_and_saves(tiny_bert_nodrop_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from llm_embedder import (DenseEncoder, EmbedderCollator, EmbedderTrainer, RetrievalTrainingArguments,
                              TrainDataset)
    from llm_embedder.convert.beir import records_from_beir
    from llm_embedder.corpus import load_corpus

    encoder = DenseEncoder.from_pretrained(tiny_bert_nodrop_dir, query_max_length=32, key_max_length=32)
    corpus = load_corpus("llm-embedder:scifact/corpus.jsonl")
    records = records_from_beir("llm-embedder:scifact", "train")[:16]
    train = TrainDataset.from_records(records, corpus=corpus, train_group_size=2, default_task="qa")
    args = RetrievalTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1,
                                      use_cpu=True, disable_tqdm=True)
    trainer = EmbedderTrainer(model=encoder, args=args, train_dataset=train, data_collator=EmbedderCollator(encoder))
    trainer.train()
    trainer.save_model(str(tmp_path))
    assert trainer.state.global_step == 2
    texts = ["a claim about cells", "an abstract about proteins"]
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path), device="cpu").encode(texts),
                               encoder.encode(texts, side="key", show_progress=False), atol=1e-5)
