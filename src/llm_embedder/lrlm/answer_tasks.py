"""eval_lm's ``--task qa`` and ``--task icl`` (PubMedQA): the LM's own metric given retrieved keys.

``qa``: keys are corpus rows (abstracts). The LM input is the project's ``qa`` scoring template, the one
``run_lm_score.py`` uses for the teacher: ``Knowledge: {key}\\nQuestion: {query}\\nAnswer:`` then
``" {answer}"``. The k retrieved keys, each cut to ``--key_max_length`` tokens, are joined by a newline
(best first) into ``{key}``; with k = 1 and the default lengths the prompt is exactly the teacher's. The
target is the record's answer (PubMedQA: the long answer); the row is its mean NLL per token (also its
sum), from :func:`llm_embedder.lm.pairs.build_plan`, so the key is cut and never the answer.

``icl``: keys are train questions, each shown as a demonstration ``{question}\\n{decision}`` (the shape
of the reference's icl keys, ``input\\noutput``; the long answer is left out, so a demonstration teaches
the task's format and label, not the conclusion of a related paper); demonstrations are joined by a blank
line, best first, into the ``icl`` template ``{key}\\n\\n{query}\\n``; the three continuations ``yes``,
``no``, ``maybe`` are scored, the prediction is the one with the largest log-probability (summed over
its tokens; ties go to the earlier label), and the NLL is ``-log p(gold label)``.

``none`` fills ``{key}`` with an empty string: the prompt differs from the retrieved ones only by the
missing text. Decision labels come from the records' ``final_decision`` or, joined by ``query_id``, from
``--queries`` (BEIR ``queries.jsonl`` with ``final_decision``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..corpus import Corpus
from ..errors import UserError
from ..resources import resolve_data_path
from ..schema import read_records

ICL_LABELS = ("yes", "no", "maybe")
TEMPLATE = {"qa": "qa", "icl": "icl"}
KEY_JOIN = {"qa": "\n", "icl": "\n\n"}


@dataclass
class TaskData:
    """Test targets and the pool the retrievers search."""

    task: str
    records: list[dict]  # the test targets (``label`` filled in for icl)
    pool: Corpus  # qa: the corpus; icl: the train questions
    pool_labels: list[str] | None  # icl: the decision of each pool row
    exclude: list[set[int]]  # per target, pool rows never retrieved for it
    positives: list[list[int]]  # per target, the labelled positive rows (qa oracle)


def _labels(path, argument: str) -> dict[str, str]:
    from ..io import read_json_objects

    labels = {str(row.get("_id", row.get("id"))): row["final_decision"]
              for row in read_json_objects(path)[1] if "final_decision" in row}
    if not labels:
        raise UserError(f"{argument}: {path} has no rows with final_decision")
    return labels


def _attach_labels(records: list[dict], rf, labels: dict[str, str] | None, argument: str) -> None:
    for i, r in enumerate(records):
        label = r.get("final_decision")
        if label is None and labels is not None:
            label = labels.get(str(r.get("query_id")))
        if label is None:
            raise UserError(f"--task icl: {rf.where(i)}: no decision label for query_id {r.get('query_id')!r} "
                            f"(give records a final_decision, or pass --queries queries.jsonl with final_decision)")
        if label not in ICL_LABELS:
            raise UserError(f"{argument}: {rf.where(i)}: decision {label!r} is not one of {', '.join(ICL_LABELS)}")
        r["label"] = label


def load(task: str, eval_data, *, corpus=None, train_data=None, queries=None, max_queries=None) -> TaskData:
    """Read and check everything the mode needs (one line per problem), before any model loads."""
    path = resolve_data_path(eval_data)
    if not path.is_file():
        raise UserError(f"--eval_data: {path}: file not found")
    rf = read_records(path)
    records = [dict(r) for r in (rf.records[:max_queries] if max_queries else rf.records)]
    if not records:
        raise UserError(f"--eval_data: {path} has no records")
    for i, r in enumerate(records):
        r.setdefault("query_id", str(i))
    if task == "qa":
        if corpus is None:
            raise UserError("--task qa needs --corpus (the keys to retrieve, e.g. llm-embedder:pubmedqa/corpus.jsonl)")
        from ..corpus import load_corpus

        pool = load_corpus(resolve_data_path(corpus))
        for i, r in enumerate(records):
            if not r.get("answers"):
                raise UserError(f"--task qa: {rf.where(i)}: answers: missing or empty (the LM is scored on the answer)")
            bad = [p for p in r.get("pos_index") or [] if not 0 <= p < len(pool)]
            if bad:
                raise UserError(f"--task qa: {rf.where(i)}: pos_index {bad[0]} outside the corpus ({len(pool)} rows)")
        return TaskData(task, records, pool, None, [set() for _ in records], [list(r.get("pos_index") or []) for r in records])
    if task != "icl":
        raise UserError(f"--task: unknown task {task!r} (lrlm, qa, icl)")
    if train_data is None:
        raise UserError("--task icl needs --train_data (the questions demonstrations are retrieved from)")
    labels = _labels(queries, "--queries") if queries else None
    _attach_labels(records, rf, labels, "--eval_data")
    train_rf = read_records(resolve_data_path(train_data))
    train = [dict(r) for r in train_rf.records]
    for i, r in enumerate(train):
        r.setdefault("query_id", str(i))
    _attach_labels(train, train_rf, labels, "--train_data")
    pool = Corpus.from_texts([r["query"] for r in train], [str(r["query_id"]) for r in train])
    by_id = {qid: row for row, qid in enumerate(pool.ids)}
    exclude = [{by_id[str(r["query_id"])]} if str(r["query_id"]) in by_id else set() for r in records]
    return TaskData(task, records, pool, [r["label"] for r in train], exclude, [[] for _ in records])


def check_k(data: TaskData, k: int, methods: Sequence[str]) -> None:
    """``--k`` against the pool (and the positives, for the oracle)."""
    room = len(data.pool) - max((len(s) for s in data.exclude), default=0)
    if k > room:
        what = "corpus" if data.task == "qa" else "train pool (less the query itself)"
        raise UserError(f"--k {k} is larger than the {what} ({room} keys)")
    if "oracle" in methods:
        if data.task == "icl":
            raise UserError("--retrieval_method oracle: no oracle for --task icl (demonstrations chosen by the gold "
                            "label would leak it); use none, random, bm25 or dense")
        short = next((i for i, p in enumerate(data.positives) if len(p) < k), None)
        if short is not None:
            raise UserError(f"--retrieval_method oracle: record {short} ({data.records[short]['query_id']}) has "
                            f"{len(data.positives[short])} positives (pos_index), fewer than --k {k}")


def _key(data: TaskData, row: int) -> str:
    """One key's text: the abstract (qa) or the demonstration ``{question}\n{decision}`` (icl)."""
    if data.task == "qa":
        return data.pool.texts[row]
    return f"{data.pool.texts[row]}\n{data.pool_labels[row]}"


def key_text(data: TaskData, rows: Sequence[int], cut: dict[str, str]) -> str:
    """The ``{key}`` field for these pool rows (``cut`` maps each key to itself cut to ``--key_max_length``)."""
    return KEY_JOIN[data.task].join(cut[_key(data, r)] for r in rows)


def plan(data: TaskData, ranked: Sequence[Sequence[int]], tokenizer, max_length: int, key_max_length: int):
    """Tokenised ``(prompt, target)`` sequences per target, with the project's scoring plan (same cuts, BOS,
    answer checks as ``run_lm_score.py``), and the plan's stats."""
    from ..lm.pairs import build_plan, truncate_keys

    cut, n_cut = truncate_keys(tokenizer, [_key(data, r) for rows in ranked for r in rows], key_max_length)
    rows = []
    for r, keys in zip(data.records, ranked):
        answers = list(ICL_LABELS) if data.task == "icl" else r["answers"]
        rows.append({"query": r["query"], "answers": answers, "pos": [key_text(data, keys, cut)], "task": data.task})
    scoring = build_plan(rows, tokenizer, template=TEMPLATE[data.task], max_length=max_length, key_max_length=max_length)
    items: list[list[tuple[list[int], list[int]]]] = [[] for _ in rows]
    for pair in scoring.pairs:
        items[pair.row].append((pair.prompt_ids, pair.target_ids))
    return items, {**scoring.stats, "distinct_keys_cut_to_key_max_length": n_cut}


def icl_prediction(label_logprobs: dict[str, float], gold: str) -> tuple[str, bool, float]:
    """``(predicted label, correct, -log p(gold))``; ties go to the earlier label of :data:`ICL_LABELS`."""
    pred = max(ICL_LABELS, key=lambda lab: (label_logprobs[lab], -ICL_LABELS.index(lab)))
    return pred, pred == gold, -label_logprobs[gold]


def target_row(data: TaskData, record: dict, rows: Sequence[int], logprobs: Sequence[Sequence[float]]) -> dict:
    """One per-target output line from the per-token log-probs of the target's sequences."""
    out = {"query_id": record["query_id"], "keys": list(rows), "key_ids": [data.pool.ids[r] for r in rows]}
    if data.task == "qa":
        nll = [-sum(lp) / len(lp) for lp in logprobs]
        out.update(nll=sum(nll) / len(nll), nll_sum=sum(-sum(lp) for lp in logprobs) / len(logprobs),
                   answer_tokens=[len(lp) for lp in logprobs],
                   gold_retrieved=bool(set(rows) & set(record.get("pos_index") or [])))
        return out
    label_lp = {lab: sum(lp) for lab, lp in zip(ICL_LABELS, logprobs)}
    pred, correct, nll = icl_prediction(label_lp, record["label"])
    out.update(label=record["label"], pred=pred, correct=correct, nll=nll, label_logprobs=label_lp)
    return out
