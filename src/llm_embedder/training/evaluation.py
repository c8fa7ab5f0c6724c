"""Retrieval evaluation during training: encode the corpus, search it, compute metrics.

Built once from ``--eval_data``/``--corpus`` (validated before training starts) and called by the
trainer at ``eval_steps`` and at the end. It calls the same evaluator as ``eval_retrieval``
(:func:`llm_embedder.retrieval.evaluate.evaluate`) with the same choice of instructions for the eval task. Three modes, each labelled in every output: the full corpus,
a seeded corpus subsample (all positives plus N other rows), or each query's own candidate group.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..corpus import Corpus
from ..schema import RecordFile
from ..retrieval.retriever import eval_instructions


@dataclass
class RetrievalEvaluator:
    records: RecordFile
    corpus: Corpus | None
    metrics: list[str]
    cutoffs: list[int]
    task: str = "qa"
    add_instruction: bool = False
    hits: int = 100
    batch_size: int = 64
    corpus_subsample: int | None = None
    on_groups: bool = False
    seed: int = 0
    instruction_table: dict | None = None  # {task: (query, key)} the run trains with; None: the task registry's
    encode_backend: str = "torch"  # --encode_backend: onednn / onnxruntime wrap a copy of the weights per call

    @property
    def mode(self) -> str:
        if self.on_groups:
            return "groups"
        if self.corpus_subsample:
            return f"subsample(N={self.corpus_subsample}, seed={self.seed})"
        return "full"

    def instructions(self, encoder=None) -> tuple[str, str]:
        """The run's own instructions for the eval task where it trains with them (``instruction_table``), else
        the eval task's, chosen as eval_retrieval chooses them (retriever.eval_instructions)."""
        if self.add_instruction and self.instruction_table and self.task in self.instruction_table:
            return tuple(self.instruction_table[self.task])
        return eval_instructions(self.task, self.add_instruction, getattr(encoder, "instructions", None))

    def __call__(self, encoder) -> dict:
        from ..modeling.backends import with_backend
        from ..retrieval.evaluate import evaluate_dense, evaluate_groups

        encoder = with_backend(encoder, self.encode_backend)  # built from the current weights, every call
        query_instruction, key_instruction = self.instructions(encoder)
        if self.on_groups:
            result = evaluate_groups(encoder, self.records, self.corpus, self.metrics, self.cutoffs,
                                     query_instruction=query_instruction, key_instruction=key_instruction,
                                     batch_size=self.batch_size)
        else:
            result = evaluate_dense(encoder, self.records, self.corpus, self.metrics, self.cutoffs,
                                    query_instruction=query_instruction, key_instruction=key_instruction,
                                    batch_size=self.batch_size, corpus_subsample=self.corpus_subsample,
                                    seed=self.seed, hits=self.hits)
        metrics = {k: v for k, v in result.get("metrics", result).items() if isinstance(v, (int, float))}
        return metrics
