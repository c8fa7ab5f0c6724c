"""``python -m llm_embedder.jax.train --encode`` writes the same embedding files as ``llm-embedder encode``
(vectors to 1e-5, same metadata), and ``llm-embedder search`` reads them."""
from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest

pytest.importorskip("jax")

from jax_helpers import REPO, TOY_QA  # noqa: E402
from llm_embedder.jax import train  # noqa: E402
from llm_embedder.retrieval import encode_cli, search_cli  # noqa: E402


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    with open(REPO / "data" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        path.write_text("".join(islice(f, 23)), encoding="utf-8")
    return path


@pytest.mark.slow
def test_jax_encode_writes_the_torch_encoders_files(tiny_bert_dir, corpus, tmp_path):
    common = ["--model", str(tiny_bert_dir), "--key_max_length", "64", "--query_max_length", "32", "--batch_size", "8", "--chunk_size", "4"]
    for side, source in (("key", corpus), ("query", TOY_QA)):
        args = common + ["--input", str(source), "--side", side]
        assert encode_cli.main(args + ["--output", str(tmp_path / f"torch_{side}"), "--cache_dir", str(tmp_path / "c1")]) == 0
        assert train.main(["--encode"] + args + ["--output", str(tmp_path / f"jax_{side}"),
                                                 "--cache_dir", str(tmp_path / "c2"), "--num_shards", "2",
                                                 "--shard_index", "0"]) == 0
        assert train.main(["--encode"] + args + ["--output", str(tmp_path / f"jax_{side}"),
                                                 "--cache_dir", str(tmp_path / "c2"), "--num_shards", "2",
                                                 "--shard_index", "1"]) == 0
        ref = np.load(tmp_path / f"torch_{side}.npy")
        parts = [np.load(tmp_path / f"jax_{side}.shard{i}of2.npy") for i in range(2)]
        np.testing.assert_allclose(np.concatenate(parts), ref, atol=1e-5)
        assert np.abs(ref).max() > 0.05
        metas = [json.loads((tmp_path / f"jax_{side}.shard{i}of2.json").read_text()) for i in range(2)]
        torch_meta = json.loads((tmp_path / f"torch_{side}.json").read_text())
        assert metas[0]["ids"] + metas[1]["ids"] == torch_meta["ids"]
        assert metas[0]["settings"] == torch_meta["settings"]
    # search reads the JAX shards and ranks as with the torch files
    for name, keys in (("jax", [str(tmp_path / f"jax_key.shard{i}of2.npy") for i in range(2)]),
                       ("torch", [str(tmp_path / "torch_key.npy")])):
        search_cli.main(["--query_emb", str(tmp_path / f"{name}_query.shard0of2.npy" if name == "jax" else tmp_path / "torch_query.npy"),
                         "--key_emb", *keys, "--depth", "5", "--output", str(tmp_path / f"{name}.tsv")])
    jax_run = (tmp_path / "jax.tsv").read_text().splitlines()
    torch_lines = (tmp_path / "torch.tsv").read_text().splitlines()
    assert jax_run and [line.split("\t")[:2] for line in jax_run] == [line.split("\t")[:2] for line in torch_lines[:len(jax_run)]]
