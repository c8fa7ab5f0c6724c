"""Dense search: faiss flat equals a numpy argsort, chunking changes nothing, approximate indexes are opt-in."""
from __future__ import annotations

import numpy as np
import pytest

from llm_embedder.errors import UserError
from llm_embedder.retrieval.dense import IndexParams, merge_topk, search


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return _normalised(rng, 37, 16), _normalised(rng, 500, 16)


def _numpy_topk(q, k_emb, k):
    sims = q @ k_emb.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, rows, axis=1), rows


def test_flat_equals_numpy_argsort(vectors):
    q, keys = vectors
    scores, rows = search(q, keys, 10)
    ref_scores, ref_rows = _numpy_topk(q, keys, 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (37, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_query_chunks_do_not_change_results(vectors):
    q, keys = vectors
    whole = search(q, keys, 7)
    chunked = search(q, keys, 7, query_chunk=5)  # 37 queries in 8 chunks, the last one short
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_array_equal(whole[0], chunked[0])


def test_k_larger_than_corpus_returns_every_key():
    rng = np.random.default_rng(1)
    q, keys = _normalised(rng, 3, 8), _normalised(rng, 4, 8)
    scores, rows = search(q, keys, 100)
    assert rows.shape == (3, 4)
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_ivf_visiting_every_cell_is_exact_and_hnsw_finds_most(vectors):
    q, keys = vectors
    ref = _numpy_topk(q, keys, 10)[1]
    _, ivf_rows = search(q, keys, 10, index="ivf", params=IndexParams(nlist=8, nprobe=8))
    np.testing.assert_array_equal(ivf_rows, ref)
    _, hnsw_rows = search(q, keys, 10, index="hnsw", params=IndexParams(hnsw_m=16, ef_search=64))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hnsw_rows, ref)])
    assert overlap > 0.9


def test_ivf_with_few_probes_is_approximate(vectors):
    q, keys = vectors
    ref = _numpy_topk(q, keys, 10)[1]
    _, rows = search(q, keys, 10, index="ivf", params=IndexParams(nlist=12, nprobe=1))
    assert not np.array_equal(rows, ref)  # one cell of twelve cannot hold every neighbour


def test_merging_shards_equals_searching_the_whole_corpus(vectors):
    q, keys = vectors
    whole = search(q, keys, 10)
    parts = []
    for lo, hi in ((0, 123), (123, 400), (400, 500)):
        s, r = search(q, keys[lo:hi], 10)
        parts.append((s, r, lo))
    merged = merge_topk(parts, 10)
    np.testing.assert_array_equal(merged[1], whole[1])
    np.testing.assert_allclose(merged[0], whole[0], rtol=1e-6)


def test_bad_arguments():
    rng = np.random.default_rng(2)
    with pytest.raises(UserError, match="--faiss_index"):
        search(_normalised(rng, 2, 4), _normalised(rng, 5, 4), 2, index="lsh")
    with pytest.raises(UserError, match="dimension"):
        search(_normalised(rng, 2, 4), _normalised(rng, 5, 8), 2)


# ---- cached, resumable, sharded encoding (retrieval.encode) ----

from retrieval_helpers import BagOfWordsEncoder, one_torch_thread  # noqa: E402,F401  (autouse fixture)

from llm_embedder.retrieval.encode import encode_texts, shard_rows  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 5 + 1)) + f" item{i}" for i in range(50)]


def test_cache_is_reused_and_keyed_by_texts_and_instruction(tmp_path):
    enc = BagOfWordsEncoder()
    first = encode_texts(enc, TEXTS, cache_dir=tmp_path, chunk_size=16, show_progress=False)
    np.testing.assert_array_equal(first, BagOfWordsEncoder().encode(TEXTS))
    assert enc.encoded == 50
    again = encode_texts(enc, TEXTS, cache_dir=tmp_path, chunk_size=16, show_progress=False)
    assert enc.encoded == 50 and np.array_equal(first, again)  # nothing re-encoded
    assert list(tmp_path.glob("embeddings/*/emb.npy")) and not list(tmp_path.glob("embeddings/*/chunks/*.npy"))
    encode_texts(enc, TEXTS, instruction="find: ", cache_dir=tmp_path, chunk_size=16, show_progress=False)
    encode_texts(enc, TEXTS[:-1] + ["changed"], cache_dir=tmp_path, chunk_size=16, show_progress=False)
    encode_texts(BagOfWordsEncoder(dim=32), TEXTS, cache_dir=tmp_path, chunk_size=16, show_progress=False)  # other weights
    assert enc.encoded == 150 and len(list(tmp_path.glob("embeddings/*/emb.npy"))) == 4


def test_model_dir_fingerprint_follows_the_weight_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-v1")
    enc = BagOfWordsEncoder()
    encode_texts(enc, TEXTS, cache_dir=tmp_path / "c", model_dir=model, show_progress=False)
    encode_texts(enc, TEXTS, cache_dir=tmp_path / "c", model_dir=model, show_progress=False)
    assert enc.encoded == 50
    (model / "model.safetensors").write_bytes(b"weights-v2, retrained")
    encode_texts(enc, TEXTS, cache_dir=tmp_path / "c", model_dir=model, show_progress=False)
    assert enc.encoded == 100


def test_a_killed_run_resumes_after_the_last_finished_chunk(tmp_path):
    killed = BagOfWordsEncoder(fail_after=2)  # dies while encoding the third chunk
    with pytest.raises(KeyboardInterrupt):
        encode_texts(killed, TEXTS, cache_dir=tmp_path, chunk_size=16, show_progress=False)
    assert len(list(tmp_path.glob("embeddings/*/chunks/*.npy"))) == 2
    resumed = BagOfWordsEncoder()
    emb = encode_texts(resumed, TEXTS, cache_dir=tmp_path, chunk_size=16, show_progress=False)
    assert resumed.encoded == 50 - 32  # only rows 32..49
    np.testing.assert_array_equal(emb, BagOfWordsEncoder().encode(TEXTS))


def test_shards_tile_the_rows_and_the_last_one_merges(tmp_path):
    enc = BagOfWordsEncoder()
    parts = [encode_texts(enc, TEXTS, cache_dir=tmp_path, chunk_size=8, num_shards=3, shard_index=i,
                          show_progress=False) for i in range(3)]
    assert [shard_rows(50, 8, 3, i) for i in range(3)] == [(0, 16), (16, 32), (32, 50)]
    np.testing.assert_array_equal(np.concatenate(parts), BagOfWordsEncoder().encode(TEXTS))
    encode_texts(enc, TEXTS, cache_dir=tmp_path, chunk_size=8, show_progress=False)
    assert enc.encoded == 50  # the merged matrix was left by the last shard


def test_encode_and_search_cli_over_two_shards_equal_one_search(tmp_path, tiny_bert_dir, data_dir):
    import json as _json

    from llm_embedder.cli import main as cli
    from llm_embedder.corpus import load_corpus
    from llm_embedder.modeling.encoder import DenseEncoder
    from llm_embedder.retrieval.search_cli import main as search_main

    rows = (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    corpus_path = tmp_path / "corpus.jsonl"
    corpus_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    queries = tmp_path / "q.json"
    queries.write_text("".join(_json.dumps({"query": q, "query_id": f"q{i}"}) + "\n"
                               for i, q in enumerate(["cancer cells", "vitamin D bone density", "gene expression"])))
    common = ["--model", str(tiny_bert_dir), "--cache_dir", str(tmp_path / "cache"), "--batch_size", "32",
              "--chunk_size", "16", "--key_max_length", "64"]
    for shard in ("0", "1"):
        assert cli(["encode", "--input", str(corpus_path), "--output", str(tmp_path / "keys"), "--num_shards", "2",
                    "--shard_index", shard, "--key_template", "{title} {text}", *common]) == 0
    assert cli(["encode", "--side", "query", "--input", str(queries), "--output", str(tmp_path / "queries"), *common]) == 0
    assert _json.loads((tmp_path / "keys.shard1of2.json").read_text())["row_offset"] == 16
    with pytest.raises(SystemExit):
        search_main(["--query_emb", str(tmp_path / "queries.npy"), "--key_emb", str(tmp_path / "keys.shard0of2.npy"),
                     str(tmp_path / "keys.shard0of2.npy"), "--output", str(tmp_path / "x.tsv")])  # overlapping shards
    assert search_main(["--query_emb", str(tmp_path / "queries.npy"), "--key_emb", str(tmp_path / "keys.shard1of2.npy"),
                        str(tmp_path / "keys.shard0of2.npy"), "--depth", "5", "--output", str(tmp_path / "run.tsv")]) == 0

    corpus = load_corpus(corpus_path, key_template="{title} {text}")
    enc = DenseEncoder.from_pretrained(tiny_bert_dir, key_max_length=64)
    ref_scores, ref_rows = search(enc.encode(["cancer cells", "vitamin D bone density", "gene expression"], side="query",
                                             show_progress=False),
                                  enc.encode(corpus.texts, side="key", show_progress=False), 5)
    lines = [line.split("\t") for line in (tmp_path / "run.tsv").read_text().splitlines()]
    assert [(q, d) for q, d, _ in lines] == [(f"q{i}", corpus.ids[r]) for i in range(3) for r in ref_rows[i]]
    np.testing.assert_allclose([float(s) for *_, s in lines], ref_scores.ravel(), rtol=1e-4, atol=1e-5)
