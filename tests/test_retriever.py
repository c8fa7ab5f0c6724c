"""One evaluator over one Retriever interface; one choice of eval instructions for the CLI and the trainer."""
from __future__ import annotations

import numpy as np
import pytest

from llm_embedder.corpus import Corpus
from llm_embedder.errors import UserError
from llm_embedder.retrieval.evaluate import evaluate
from llm_embedder.retrieval.retriever import eval_instructions, eval_task
from llm_embedder.tasks import get_task


class FixedRetriever:
    """A Retriever that ranks rows in a given order (to test the evaluator alone)."""

    def __init__(self, rows):
        self.rows, self.indexed = np.asarray(rows), None

    def index(self, corpus):
        self.indexed = corpus
        return self

    def search(self, queries, hits):
        rows = self.rows[:, :hits]
        return -np.arange(rows.shape[1], dtype=np.float32)[None].repeat(len(queries), 0), rows


def test_evaluate_takes_any_retriever_and_scores_its_ranking():
    corpus = Corpus.from_texts(["a", "b", "c"])
    records = [{"query": "q1", "pos_index": [1]}, {"query": "q2", "pos_index": [2]}]
    retriever = FixedRetriever([[1, 0, 2], [0, 1, -1]])
    result = evaluate(retriever, records, corpus, ["mrr"], [1, 3], hits=3, label="fixed")
    assert retriever.indexed is corpus
    assert result["metrics"] == {"mrr@1": 0.5, "mrr@3": 0.5} and result["corpus"] == "fixed"
    assert result["run"]["2"] == {"0": 0.0, "1": -1.0}  # row -1 is no result
    bare = evaluate(FixedRetriever([[2, 1, 0], [0, 1, 2]]), records, corpus, [], [], hits=2, label="mining")
    assert bare["metrics"] == {} and bare["rows"].tolist() == [[2, 1], [0, 1]]  # rows for mining, no qrels needed


def test_eval_instructions_are_chosen_one_way():
    qa = (get_task("qa").query_instruction, get_task("qa").key_instruction)
    saved = {"qa": ("Q: ", "K: ")}
    assert eval_instructions("qa", True) == qa
    assert eval_instructions("qa", True, saved) == ("Q: ", "K: ")  # the model's own first
    assert eval_instructions("qa", None, saved) == ("Q: ", "K: ") and eval_instructions("qa", None) == ("", "")
    assert eval_instructions("qa", False, saved) == ("", "")


def test_eval_task_is_the_records_one_task():
    assert eval_task([{"task": "tool"}, {}], None) == "tool"
    assert eval_task([{}], None, default="chat") == "chat" and eval_task([{"task": "qa"}], "icl") == "icl"
    with pytest.raises(UserError, match="the records mix tasks"):
        eval_task([{"task": "qa"}, {"task": "tool"}])
