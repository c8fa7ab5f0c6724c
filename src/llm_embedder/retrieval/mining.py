"""Hard-negative mining (``--metrics collate_neg``): retrieved keys that are not positives become ``neg``.

For every input record, in order, the negatives are the top ``max_neg_num`` retrieved corpus rows after

* skipping the first ``neg_start`` retrieved ranks (the very top is where unlabelled positives hide),
* removing positives by row (``pos_index``) and by normalised text (case and whitespace folded; the
  record's ``pos`` texts and the texts of its ``pos_index`` rows), so a duplicate of a positive under
  another row is not mined either,
* with ``filter_answers``, removing keys that contain one of the record's ``answers`` (SQuAD-normalised,
  whole tokens: the metric's ``has_answer``).

The record gets ``neg_index`` (rows, rank order), ``neg`` (their texts) and, when it had ids, ``neg_ids``;
everything else is kept, except what described the old negatives: ``teacher_scores`` and the other
negative-aligned fields (``schema.KEY_ALIGNED_FIELDS``: icl's ``neg_score``, ``neg_scores``) are dropped,
counted per field and logged (re-score the mined file to get them back). A record whose
retrieval left no negative is kept with empty lists and counted. The reference implementation drops such
rows, and never filters positives by index (it compares a row number with a list); this one does both.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..corpus import Corpus
from ..errors import UserError
from ..schema import KEY_ALIGNED_FIELDS
from .metrics import has_answer

logger = logging.getLogger(__name__)
# fields describing the old negatives: gone after mining (neg, neg_index and neg_ids are recomputed)
STALE_AFTER_MINING = ("teacher_scores",) + tuple(f for f in KEY_ALIGNED_FIELDS["neg"] if f not in ("neg", "neg_index", "neg_ids"))


def normalize_text(text: str) -> str:
    """Case- and whitespace-folded text, for comparing keys with positives."""
    return " ".join(text.lower().split())


@dataclass
class MiningStats:
    """What mining did, for the log and the run summary."""

    rows: int = 0
    rows_without_negatives: int = 0
    rows_with_fewer_negatives: int = 0  # some, but fewer than max_neg_num
    negatives: int = 0
    positives_skipped: int = 0  # retrieved keys dropped because they are positives (row or text)
    answer_keys_skipped: int = 0
    teacher_scores_removed: int = 0
    stale_fields_removed: dict = field(default_factory=dict)  # field -> rows it was dropped from

    def as_dict(self) -> dict:
        return asdict(self)


def check_mining_args(max_neg_num: int, neg_start: int, hits: int) -> None:
    """Argument checks done before any retrieval."""
    if max_neg_num < 1:
        raise UserError(f"--max_neg_num: must be at least 1, got {max_neg_num}")
    if neg_start < 0:
        raise UserError(f"--neg_start: must be 0 or more, got {neg_start}")
    if hits < neg_start + max_neg_num:
        raise UserError(f"--hits: {hits} retrieved keys cannot give --max_neg_num {max_neg_num} negatives "
                        f"after skipping --neg_start {neg_start}; use --hits {neg_start + max_neg_num} or more")


def mine_negatives(records: Sequence[dict], rows: np.ndarray, corpus: Corpus, max_neg_num: int = 100,
                   neg_start: int = 0, filter_answers: bool = False, exclude_by_index: bool = True,
                   exclude_by_text: bool = True) -> tuple[list[dict], MiningStats]:
    """New records with mined ``neg``/``neg_index`` from ranked corpus ``rows`` ``[len(records), hits]``.

    ``exclude_by_index`` / ``exclude_by_text`` exist so tests can show each filter is needed; mining
    should keep both on.
    """
    if len(rows) != len(records):
        raise ValueError(f"{len(rows)} result rows for {len(records)} records")
    stats = MiningStats(rows=len(records))
    out = []
    for record, ranked in zip(records, rows):
        pos_rows = set(record.get("pos_index") or [])
        pos_texts = {normalize_text(t) for t in record.get("pos") or []}
        pos_texts |= {normalize_text(corpus.texts[r]) for r in pos_rows if 0 <= r < len(corpus)}
        answers = record.get("answers") or []
        negatives: list[int] = []
        seen: set[int] = set()
        for row in ranked[neg_start:]:
            row = int(row)
            if row < 0:
                break
            if (exclude_by_index and row in pos_rows) or (exclude_by_text and normalize_text(corpus.texts[row]) in pos_texts):
                stats.positives_skipped += 1
                continue
            if filter_answers and answers and has_answer(answers, corpus.texts[row]):
                stats.answer_keys_skipped += 1
                continue
            if row in seen:
                continue
            seen.add(row)
            negatives.append(row)
            if len(negatives) == max_neg_num:
                break
        new = dict(record)
        new["neg_index"] = negatives
        new["neg"] = [corpus.texts[r] for r in negatives]
        if "neg_ids" in new or "pos_ids" in new:  # keep the original doc ids in step with the new rows
            new["neg_ids"] = [corpus.ids[r] for r in negatives]
        for name in STALE_AFTER_MINING:
            if name in new:
                del new[name]
                stats.stale_fields_removed[name] = stats.stale_fields_removed.get(name, 0) + 1
        stats.teacher_scores_removed = stats.stale_fields_removed.get("teacher_scores", 0)
        if not negatives:
            stats.rows_without_negatives += 1
        elif len(negatives) < max_neg_num:
            stats.rows_with_fewer_negatives += 1
        stats.negatives += len(negatives)
        out.append(new)
    if stats.stale_fields_removed:
        logger.warning("removed fields that described the old negatives (re-score the mined file): %s",
                       ", ".join(f"{name} from {n} records" for name, n in stats.stale_fields_removed.items()))
    if stats.rows_without_negatives:
        logger.warning("%d of %d records got no negative (kept with empty neg lists)", stats.rows_without_negatives, stats.rows)
    logger.info("mined %d negatives for %d records (%d positives and %d answer-bearing keys skipped)",
                stats.negatives, stats.rows, stats.positives_skipped, stats.answer_keys_skipped)
    return out, stats


def write_mined_sidecar(mined_path: Path, source: Path, corpus: Corpus, key_template: str | None, stats: MiningStats,
                        retrieval: dict) -> Path:
    """``{name}.neg.{save_name}.meta.json`` beside the mined file: the corpus its ``neg_index`` rows point at
    (so ``validate`` checks them and LM scoring finds the corpus without ``--corpus``), the source file, the
    retrieval settings and the mining counts."""
    from ..paths import portable_path
    from ..io import write_json
    from ..paths import meta_path

    folder = Path(mined_path).parent
    meta = {"mined_from": portable_path(source, folder), "records": Path(mined_path).name,
            "corpus": portable_path(corpus.path, folder), "corpus_rows": len(corpus), "key_template": key_template,
            "retrieval": retrieval, "counts": stats.as_dict()}
    return write_json(meta_path(mined_path), meta)
