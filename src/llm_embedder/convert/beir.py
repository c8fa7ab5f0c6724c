"""BEIR folder → schema records: ``llm-embedder convert beir`` and :func:`records_from_beir`.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``,
optionally ``answers``) and ``qrels/<split>.tsv`` (``query-id  corpus-id  score``). Each judged query becomes
one record whose keys point at corpus rows: ``pos_index`` (row numbers of ``corpus.jsonl``, which stays the
row-indexed corpus and is not copied) with the original ``pos_ids``.

Graded labels decide the roles (as in Trove): a qrel with ``min_score <= score <= max_score`` is a positive;
with ``below_min_as_negatives`` a qrel under ``min_score`` becomes a negative (``neg_index``) instead of being
dropped; with ``graded_as_teacher_scores`` the grades travel as ``teacher_scores`` aligned with ``pos + neg``,
so training on several relevance levels is KL distillation on the labels. Several qrels files merge per
query (a pair judged twice keeps its highest grade), and ``negatives_from`` adds negatives from a schema file
(for instance one mined earlier) matched by ``query_id``. Nothing is skipped silently: every dropped pair or
query is counted in the ``{split}.meta.json`` sidecar, which also records the sources, their sha256 and the
corpus the records point at.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..corpus import ids_to_rows, read_corpus_ids
from ..errors import UserError
from ..resources import resolve_data_path
from ..schema import raise_if_errors, read_json_objects, read_records, validate_record
from ..paths import portable_path
from .sidecar import sha256_file

QRELS_HEADER_NAMES = {"query-id", "query_id", "qid", "query"}


# ------------------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class Judgment:
    """One qrels line: the grade a query gives a document, and where it was read."""

    query_id: str
    doc_id: str
    grade: int | float
    where: str


def parse_grade(text: str) -> int | float:
    """A relevance grade: an integer when it is one (``"1"``, ``"1.0"`` → 1), else a finite float."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return int(value) if value.is_integer() else value


def read_qrels(path: str | os.PathLike) -> list[Judgment]:
    """Read a qrels file: BEIR TSV (``query-id corpus-id score``, header optional) or TREC (``qid 0 docid rel``).

    Every malformed line is reported (``file:line: ...``) in one UserError.
    """
    path = resolve_data_path(path)
    if not path.is_file():
        raise UserError(f"{path}: qrels file not found")
    judgments, problems = [], []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            cols = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            cols = [c.strip() for c in cols]
            if len(cols) == 4:  # TREC qrels: qid iteration docid relevance
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                problems.append(f"{path}:{n}: expected 3 tab-separated columns (query-id corpus-id score) "
                                f"or 4 (TREC: qid 0 docid relevance), got {len(cols)}")
                continue
            qid, doc_id, score = cols
            if not judgments and not problems and qid.lower() in QRELS_HEADER_NAMES:
                continue  # the header line
            try:
                grade = parse_grade(score)
            except ValueError:
                problems.append(f"{path}:{n}: score: {score!r} is not a number")
                continue
            if not qid or not doc_id:
                problems.append(f"{path}:{n}: {'query-id' if not qid else 'corpus-id'}: empty")
                continue
            judgments.append(Judgment(qid, doc_id, grade, f"{path}:{n}"))
    raise_if_errors(problems)
    return judgments


@dataclass
class BeirQuery:
    text: str
    answers: list[str] | None


def read_queries(path: str | os.PathLike) -> dict[str, BeirQuery]:
    """``queries.jsonl`` rows by id; each needs ``_id`` and a non-empty ``text``; ``answers`` is optional."""
    path, rows, lines = read_json_objects(path)
    queries, first_line, problems = {}, {}, []
    for row, n in zip(rows, lines):
        qid = row.get("_id", row.get("id"))
        text, answers = row.get("text"), row.get("answers")
        if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid) == "":
            problems.append(f"{path}:{n}: _id: missing or not a string")
            continue
        qid = str(qid)
        if qid in first_line:
            problems.append(f"{path}:{n}: _id: query id {qid!r} repeats line {first_line[qid]}")
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{path}:{n}: text: missing or empty")
            continue
        if isinstance(answers, str):
            answers = [answers]
        if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            problems.append(f"{path}:{n}: answers: must be a string or a list of strings")
            continue
        first_line[qid] = n
        queries[qid] = BeirQuery(text, answers)
    raise_if_errors(problems)
    return queries


@dataclass
class BeirFolder:
    """A BEIR folder loaded once (document rows and queries), reusable for every split."""

    root: Path
    corpus_path: Path
    queries_path: Path
    doc_ids: list[str]
    doc_rows: dict[str, int]
    queries: dict[str, BeirQuery]

    @classmethod
    def load(cls, root: str | os.PathLike) -> "BeirFolder":
        root = resolve_data_path(root)
        if not root.is_dir():
            raise UserError(f"BEIR_DIR: {root} is not a folder")
        corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
        for p in (corpus_path, queries_path):
            if not p.is_file():
                raise UserError(f"BEIR_DIR: {root} has no {p.name} (expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
        corpus_path, doc_ids = read_corpus_ids(corpus_path)
        return cls(root, corpus_path, queries_path, doc_ids, ids_to_rows(doc_ids, corpus_path), read_queries(queries_path))

    def qrels_path(self, split: str) -> Path:
        return self.root / "qrels" / f"{split}.tsv"

    def splits(self) -> list[str]:
        """Splits that have a qrels file, sorted."""
        folder = self.root / "qrels"
        return sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------- conversion

@dataclass
class BeirSplit:
    """The records of one split plus what a reader needs to trust them: counts and sources."""

    split: str
    records: list[dict]
    counts: dict[str, int]
    sources: dict[str, object] = field(default_factory=dict)


def _negatives_by_query(path: str | os.PathLike, folder: BeirFolder) -> tuple[Path, dict[str, list[str]]]:
    """``query_id -> [doc id, ...]`` from a schema file's ``neg_index`` (rows of this BEIR corpus).

    The file is validated against the corpus first, so ``neg_ids``, when present, must name the same rows.
    """
    rf = read_records(path, purpose="any", corpus_ids=folder.doc_ids)
    negatives: dict[str, list[str]] = {}
    problems = []
    for i, record in enumerate(rf.records):
        if "query_id" not in record:
            problems.append(f"{rf.where(i)}: query_id: needed to match negatives to BEIR queries")
        elif record.get("neg_index") is None:
            problems.append(f"{rf.where(i)}: neg_index: needed (rows of {folder.corpus_path})")
        else:
            negatives.setdefault(str(record["query_id"]), []).extend(folder.doc_ids[row] for row in record["neg_index"])
    raise_if_errors(problems)
    return rf.path, negatives


def _check_ids(judgments: Sequence[Judgment], folder: BeirFolder) -> None:
    problems = []
    for j in judgments:
        if j.query_id not in folder.queries:
            problems.append(f"{j.where}: query-id: {j.query_id!r} is not in {folder.queries_path}")
        elif j.doc_id not in folder.doc_rows:
            problems.append(f"{j.where}: corpus-id: {j.doc_id!r} is not in {folder.corpus_path}")
    raise_if_errors(problems)


def check_options(min_score: float, max_score: float | None, graded_as_teacher_scores: bool,
                  negatives_from: str | os.PathLike | None) -> None:
    """Refuse option combinations that cannot work, naming the argument."""
    if max_score is not None and max_score < min_score:
        raise UserError(f"--max_score: {max_score} is below --min_score {min_score}")
    if graded_as_teacher_scores and negatives_from is not None:
        raise UserError("--negatives_from: its negatives have no grade, so they cannot be combined with "
                        "--graded_as_teacher_scores (give graded negatives with --extra_qrels instead)")
    if negatives_from is not None and not resolve_data_path(negatives_from).is_file():
        raise UserError(f"--negatives_from: {resolve_data_path(negatives_from)}: file not found")


def convert_beir_split(folder: BeirFolder | str | os.PathLike, split: str, min_score: float = 1,
                       max_score: float | None = None, *, below_min_as_negatives: bool = False,
                       graded_as_teacher_scores: bool = False, extra_qrels: Iterable[str | os.PathLike] = (),
                       negatives_from: str | os.PathLike | None = None, task: str | None = None) -> BeirSplit:
    """Convert one split; see the module docstring for the rules. Bad ids are a UserError with file:line."""
    check_options(min_score, max_score, graded_as_teacher_scores, negatives_from)
    if not isinstance(folder, BeirFolder):
        folder = BeirFolder.load(folder)
    qrels_path = folder.qrels_path(split)
    if not qrels_path.is_file():
        raise UserError(f"--splits: {folder.root} has no qrels/{split}.tsv (found: {', '.join(folder.splits()) or 'none'})")
    qrels_files = [qrels_path] + [resolve_data_path(p) for p in extra_qrels]
    judgments = [j for p in qrels_files for j in read_qrels(p)]
    _check_ids(judgments, folder)
    mined_path, mined = _negatives_by_query(negatives_from, folder) if negatives_from is not None else (None, {})

    counts = dict.fromkeys(("qrels_pairs", "queries_judged", "records", "positives", "negatives",
                            "below_min_score", "above_max_score", "duplicate_pairs", "conflicting_grades",
                            "queries_without_positive", "records_with_answers", "mined_negatives",
                            "mined_negatives_dropped_judged_relevant", "mined_negatives_repeated"), 0)
    grades: dict[str, dict[str, int | float]] = {}  # query -> doc -> grade, in first-seen order
    for j in judgments:
        counts["qrels_pairs"] += 1
        docs = grades.setdefault(j.query_id, {})
        if j.doc_id in docs:
            counts["duplicate_pairs" if docs[j.doc_id] == j.grade else "conflicting_grades"] += 1
            docs[j.doc_id] = max(docs[j.doc_id], j.grade)
        else:
            docs[j.doc_id] = j.grade
    counts["queries_judged"] = len(grades)

    records = []
    for qid, docs in grades.items():
        positives = [(d, g) for d, g in docs.items() if g >= min_score and (max_score is None or g <= max_score)]
        positives.sort(key=lambda item: -item[1])  # best grade first; stable for ties
        below = [(d, g) for d, g in docs.items() if g < min_score]
        counts["below_min_score"] += len(below)
        counts["above_max_score"] += sum(1 for g in docs.values() if max_score is not None and g > max_score)
        negatives = list(below) if below_min_as_negatives else []
        seen = {d for d, _ in negatives}
        for doc_id in mined.get(qid, []):
            if doc_id in docs and docs[doc_id] >= min_score:
                counts["mined_negatives_dropped_judged_relevant"] += 1
            elif doc_id in seen:
                counts["mined_negatives_repeated"] += 1
            else:
                seen.add(doc_id)
                negatives.append((doc_id, None))
                counts["mined_negatives"] += 1
        if not positives:
            counts["queries_without_positive"] += 1
            continue
        query = folder.queries[qid]
        record = {"query": query.text, "query_id": qid,
                  "pos_index": [folder.doc_rows[d] for d, _ in positives], "pos_ids": [d for d, _ in positives]}
        if negatives:
            record["neg_index"] = [folder.doc_rows[d] for d, _ in negatives]
            record["neg_ids"] = [d for d, _ in negatives]
        if graded_as_teacher_scores:
            record["teacher_scores"] = [g for _, g in positives + negatives]
        if query.answers is not None:
            record["answers"] = list(query.answers)
            counts["records_with_answers"] += 1
        if task is not None:
            record["task"] = task
        counts["positives"] += len(positives)
        counts["negatives"] += len(negatives)
        records.append(record)
    counts["records"] = len(records)
    for i, record in enumerate(records):  # the converter's own output must pass the schema it writes
        problems = validate_record(record, purpose="train", corpus_ids=folder.doc_ids)
        assert not problems, f"converter bug, record {i}: {problems}"
    sources = {"beir_dir": folder.root, "corpus": folder.corpus_path, "queries": folder.queries_path,
               "qrels": qrels_files[0], "extra_qrels": qrels_files[1:], "negatives_from": mined_path}
    return BeirSplit(split, records, counts, sources)


def records_from_beir(beir_dir: BeirFolder | str | os.PathLike, split: str, min_score: float = 1,
                      max_score: float | None = None, *, below_min_as_negatives: bool = False,
                      graded_as_teacher_scores: bool = False, extra_qrels: Iterable[str | os.PathLike] = (),
                      negatives_from: str | os.PathLike | None = None, task: str | None = None) -> list[dict]:
    """Schema records for one BEIR split (``pos_index`` rows of ``{beir_dir}/corpus.jsonl``).

    ``min_score <= grade <= max_score`` makes a positive; see :func:`convert_beir_split` for the options.
    ``beir_dir`` may be a path, an ``llm-embedder:`` path or a :class:`BeirFolder` loaded once for many calls.
    """
    return convert_beir_split(beir_dir, split, min_score, max_score, below_min_as_negatives=below_min_as_negatives,
                              graded_as_teacher_scores=graded_as_teacher_scores, extra_qrels=extra_qrels,
                              negatives_from=negatives_from, task=task).records


# ---------------------------------------------------------------------------------------------- outputs

def split_meta(result: BeirSplit, output_dir: Path, corpus: Path, corpus_rows: int, options: dict) -> dict:
    """The ``{split}.meta.json`` sidecar: corpus (relative to the sidecar), sources with sha256, options, counts."""
    src = result.sources
    files = [src["corpus"], src["queries"], src["qrels"], *src["extra_qrels"]]
    if src["negatives_from"] is not None:
        files.append(src["negatives_from"])
    return {
        "converted_from": "beir",
        "split": result.split,
        "records": f"{result.split}.json",
        "corpus": portable_path(corpus, output_dir),
        "corpus_rows": corpus_rows,
        "sources": {
            "beir_dir": portable_path(src["beir_dir"], output_dir),
            "corpus": portable_path(src["corpus"], output_dir),
            "queries": portable_path(src["queries"], output_dir),
            "qrels": portable_path(src["qrels"], output_dir),
            "extra_qrels": [portable_path(p, output_dir) for p in src["extra_qrels"]],
            "negatives_from": None if src["negatives_from"] is None else portable_path(src["negatives_from"], output_dir),
        },
        "sha256": {portable_path(p, output_dir): sha256_file(p) for p in files},
        "options": options,
        "counts": result.counts,
    }


# the CLI (``llm-embedder convert beir``) lives in beir_cli.py; re-exported so ``convert.beir:main`` keeps working
from .beir_cli import build_parser, main  # noqa: E402,F401
