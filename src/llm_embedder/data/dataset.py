"""TrainDataset: training examples (query + G keys, positive first, aligned teacher scores) from schema files.

Everything that does not depend on chance happens once, at load time, before any training step:
validation (schema + task + recipe checks, every problem reported as ``file:line``), choosing the
positive when it is fixed (``first`` / ``teacher``), the teacher-score filters (counted per file in
:attr:`TrainDataset.filter_report`) and ``max_sample_num``. What does depend on chance (a ``random``
positive, ``random`` negatives) is drawn in ``__getitem__`` from a generator seeded with
``(seed, epoch, index)``: the dataset holds no sampling state, so dataloader workers, ranks and resumed
runs all see the same keys for the same example in the same epoch.

Index with ``dataset[(epoch, index)]`` (what :class:`~llm_embedder.data.sampler.TaskBatchSampler` yields)
or ``dataset[index]`` (epoch 0). ``index`` is global over the concatenated files.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..corpus import Corpus, load_corpus
from ..errors import UserError
from ..retrieval.mining import normalize_text
from ..paths import sidecar_corpus
from ..schema import RecordFile, raise_if_errors, read_records, uses_history, validate_records
from ..modeling.losses import get_loss
from .inputs import TRAIN_FILE_SUFFIXES, TrainDataArgs, expand_train_paths, how_to_set  # noqa: F401  (public here too)
from ..tasks import ResolvedRecipe, describe_recipe, known_tasks, resolve_recipe

logger = logging.getLogger(__name__)



@dataclass
class _Row:
    """One usable record after load-time preparation. Keys are texts (str) or corpus rows (int)."""

    query: str
    query_id: Any
    positives: list  # one key for select_positive first/teacher; all candidates for random
    pos_scores: list | None
    negatives: list  # empty = draw random corpus rows (files without teacher scores only)
    neg_scores: list | None
    excluded: tuple = ()  # corpus rows never drawn as random negatives: the positives, by row and by text


@dataclass
class _TrainFile:
    path: Path
    task: str
    recipe: ResolvedRecipe
    rows: list[_Row]
    has_scores: bool
    corpus: Corpus | None = None  # where this file's corpus-row keys (ints) come from


def _split_keys(record: dict, keys_from_history: bool) -> tuple[list, list]:
    """``(positives, negatives)`` as key references in ``teacher_scores`` order (as schema.record_keys):
    ``history`` for tasks whose recipe says so (chat) and rows that only have history, else each side's
    texts when given, else its corpus rows (ints, read lazily)."""
    if (keys_from_history and record.get("history") is not None) or uses_history(record):
        return [], list(record["history"])
    sides = []
    for side in ("pos", "neg"):
        sides.append(list(record[side]) if record.get(side) else list(record.get(f"{side}_index") or []))
    return sides[0], sides[1]


class TrainDataset(torch.utils.data.Dataset):
    """Training examples from one or more schema files (see the module docstring).

    Item: ``{"query", "keys" (G texts, positive first), "teacher_scores" (G floats or None), "task",
    "dataset" (file position in ``files``), "query_id"}``.
    """

    def __init__(self, files: Sequence[str | os.PathLike | RecordFile] | str | os.PathLike,
                 corpus: Corpus | None = None, args: TrainDataArgs | Any | None = None, **overrides):
        """``args``: TrainDataArgs or any argument object(s) with those attribute names (see
        :meth:`TrainDataArgs.from_args`); ``overrides``: TrainDataArgs fields given directly (they win)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainDataArgs)})
        if unknown:
            raise TypeError(f"TrainDataset got unknown argument '{unknown[0]}'")
        base = args if isinstance(args, TrainDataArgs) else TrainDataArgs.from_args(*(a for a in [args] if a is not None))
        self.args = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
        self.corpus = corpus
        self._corpora: dict[Path, Corpus] = {corpus.path.resolve(): corpus} if corpus is not None and corpus.path else {}
        self._text_rows: dict[int, dict[str, list[int]]] = {}  # per corpus: normalised text -> rows
        self.seed = int(self.args.seed)
        if self.args.default_task is not None and self.args.default_task not in known_tasks():
            raise UserError(f"--default_task: unknown task '{self.args.default_task}' (known: {', '.join(known_tasks())}; add one with --task_config)")
        if isinstance(files, (str, os.PathLike, RecordFile)):
            files = [files]
        record_files = self._read_all(files)
        self.files: list[_TrainFile] = []
        self.filter_report: list[dict] = []  # one entry per file position: counts of kept / filtered records
        prepared: dict[int, tuple[_TrainFile, dict]] = {}  # a repeated (upsampled) file is prepared once
        for rf in record_files:
            if id(rf) not in prepared:
                prepared[id(rf)] = self._prepare_file(rf)
            tf, report = prepared[id(rf)]
            self.files.append(tf)
            self.filter_report.append(dict(report, dataset=len(self.files) - 1))
        self.file_sizes = [len(tf.rows) for tf in self.files]
        self._offsets = np.cumsum([0] + self.file_sizes).tolist()

    @classmethod
    def from_records(cls, records: Sequence[dict], corpus: Corpus | None = None, args=None,
                     name: str = "<records>", **overrides) -> "TrainDataset":
        """A one-file dataset from in-memory records (validated like a file; ``name`` appears in errors)."""
        rf = RecordFile(Path(name), list(records), list(range(1, len(records) + 1)))
        return cls([rf], corpus=corpus, args=args, **overrides)

    # ------------------------------------------------------------------ loading
    def _read_all(self, files) -> list[RecordFile]:
        """Read and schema-validate every file (each distinct file once) before preparing any."""
        cache: dict[Path, RecordFile] = {}
        out = []
        for item in files:
            if isinstance(item, RecordFile):
                raise_if_errors(validate_records(item, purpose="train", known_tasks=known_tasks()))
                out.append(item)
                continue
            for path in expand_train_paths(item):
                resolved = path.resolve()
                if resolved not in cache:
                    cache[resolved] = read_records(path, purpose="train", known_tasks=known_tasks())
                out.append(cache[resolved])
        if not out:
            raise UserError("--train_data: no files given")
        return out

    def _file_task(self, rf: RecordFile) -> str:
        tasks = {}
        for i, record in enumerate(rf.records):
            task = record.get("task", self.args.default_task)
            if task is None:
                raise UserError(f"{rf.where(i)}: task: missing and no --default_task given (e.g. --default_task qa)")
            tasks.setdefault(task, i)
        if len(tasks) > 1:
            (first, i0), (second, i1) = list(tasks.items())[:2]
            raise UserError(f"{rf.where(i1)}: task: '{second}' differs from '{first}' ({rf.where(i0)}): "
                            "a training file holds one task (split it into one file per task)")
        return next(iter(tasks))

    def _corpus_for(self, rf: RecordFile) -> Corpus | None:
        """The corpus a file's row indices refer to: the one its ``.meta.json`` sidecar names, else ``corpus``.

        Lets one run train on files of different corpora (SciFact and PubMedQA, say); each is loaded once
        with the given corpus's key template.
        """
        named = sidecar_corpus(rf.path)
        if named is None:
            return self.corpus
        named = named.resolve()
        if named not in self._corpora:
            template = self.corpus.key_template if self.corpus is not None else None
            logger.info("%s: keys come from its sidecar's corpus %s", rf.path, named)
            self._corpora[named] = load_corpus(named, template)
        return self._corpora[named]

    def _prepare_file(self, rf: RecordFile) -> tuple[_TrainFile, dict]:
        task = self._file_task(rf)
        corpus = self._corpus_for(rf)
        recipe = resolve_recipe(task, self.args)
        group_size = recipe.train_group_size
        scored = [r.get("teacher_scores") is not None for r in rf.records]
        has_scores = all(scored)
        errors: list[str] = []
        if any(scored) and not has_scores:
            i = scored.index(False)
            errors.append(f"{rf.where(i)}: teacher_scores: missing while {sum(scored)} other records of this file have "
                          "them (score all records of a file or none)")
        if recipe.source("losses") != "settings":  # the recipe lists its own terms
            active = [t for t in recipe.losses if t.weight > 0]
            if not active or (not has_scores and all(get_loss(t.name).needs_teacher for t in active)):
                why = "every term's weight is 0" if not active else "every term needs teacher_scores and its records have none"
                errors.append(f"{rf.path}: task '{task}': losses ({recipe.source('losses')}): {why}: nothing to learn")
        elif recipe.contrastive_weight == 0 and (not has_scores or recipe.distill_weight == 0):
            why = "its records have no teacher_scores" if not has_scores else "distill_weight is 0 too"
            errors.append(f"{rf.path}: task '{task}' has contrastive_weight 0 (from {recipe.source('contrastive_weight')}) "
                          f"but {why}: nothing to learn (score the file with run_lm_score.py, or set contrastive_weight "
                          f"{how_to_set('contrastive_weight', recipe)})")
        if recipe.select_positive == "teacher" and not has_scores:
            errors.append(f"{rf.path}: select_positive 'teacher' (from {recipe.source('select_positive')}) needs "
                          f"teacher_scores and this file has none (set select_positive first "
                          f"{how_to_set('select_positive', recipe)})")
        raise_if_errors(errors)
        logger.info("%s: task %s: %s", rf.path, task, describe_recipe(recipe))

        report = {"file": str(rf.path), "task": task, "records": len(rf), "kept": 0,
                  "below_teacher_scores_min": 0, "below_teacher_scores_margin": 0, "over_max_sample_num": 0,
                  "filters_not_applied": None}
        filters_set = recipe.teacher_scores_min is not None or recipe.teacher_scores_margin is not None
        if filters_set and not has_scores:
            report["filters_not_applied"] = "no teacher_scores in this file"
            logger.warning("%s: teacher_scores_min/margin are set for task '%s' but the file has no teacher_scores: "
                           "no record filtered", rf.path, task)

        rows: list[_Row] = []
        for i, record in enumerate(tqdm(rf.records, desc=f"preparing {rf.path.name}", disable=len(rf) < 20000)):
            scores = record.get("teacher_scores")
            if scores is not None:
                best, worst = max(scores), min(scores)
                if recipe.teacher_scores_min is not None and best < recipe.teacher_scores_min:
                    report["below_teacher_scores_min"] += 1
                    continue
                if recipe.teacher_scores_margin is not None and best - worst < recipe.teacher_scores_margin:
                    report["below_teacher_scores_margin"] += 1
                    continue
            row = self._prepare_row(rf, i, record, task, recipe, errors, corpus)
            if row is not None:
                rows.append(row)
        raise_if_errors(errors)
        if recipe.max_sample_num is not None and len(rows) > recipe.max_sample_num:
            report["over_max_sample_num"] = len(rows) - recipe.max_sample_num
            rows = rows[: recipe.max_sample_num]
        report["kept"] = len(rows)
        dropped = len(rf) - len(rows)
        if not rows:
            raise UserError(f"{rf.path}: all {len(rf)} records were filtered out "
                            f"({report['below_teacher_scores_min']} below teacher_scores_min {recipe.teacher_scores_min}, "
                            f"{report['below_teacher_scores_margin']} below teacher_scores_margin {recipe.teacher_scores_margin}): "
                            "lower the thresholds")
        (logger.warning if dropped else logger.info)(
            "%s (task %s): %d of %d records kept (%d below teacher_scores_min, %d below teacher_scores_margin, "
            "%d over max_sample_num)", rf.path, task, len(rows), len(rf), report["below_teacher_scores_min"],
            report["below_teacher_scores_margin"], report["over_max_sample_num"])
        if any(not r.negatives for r in rows) and group_size > 1 and corpus is not None:
            logger.info("%s: records without negatives get random corpus rows as negatives", rf.path)
            self._exclude_positive_rows(rows, corpus)
        return _TrainFile(rf.path, task, recipe, rows, has_scores, corpus), report

    def _prepare_row(self, rf: RecordFile, i: int, record: dict, task: str, recipe: ResolvedRecipe,
                     errors: list[str], corpus: Corpus | None) -> _Row | None:
        where = rf.where(i)
        if recipe.keys_from_history and not record.get("history"):
            errors.append(f"{where}: history: {task} records need a non-empty history (the past sessions to retrieve "
                          "from; the task's recipe has keys_from_history)")
            return None
        pos, neg = _split_keys(record, recipe.keys_from_history)
        scores = record.get("teacher_scores")
        for ref in pos + neg:
            if isinstance(ref, int):
                if corpus is None:
                    errors.append(f"{where}: pos_index/neg_index: keys given as corpus rows but no --corpus")
                    return None
                if ref >= len(corpus):
                    errors.append(f"{where}: pos_index/neg_index: row {ref} is beyond the corpus ({len(corpus)} rows)")
                    return None
        pos_scores = list(scores[: len(pos)]) if scores is not None else None
        neg_scores = list(scores[len(pos):]) if scores is not None else None
        strategy = recipe.select_positive
        if strategy == "teacher":
            best = int(np.argmax(scores))  # first of equal maxima
            if best < len(pos):
                positives, pos_scores = [pos[best]], [scores[best]]
            else:  # the teacher's favourite is a listed negative: it becomes the positive
                j = best - len(pos)
                positives, pos_scores = [neg[j]], [scores[best]]
                neg, neg_scores = neg[:j] + neg[j + 1:], neg_scores[:j] + neg_scores[j + 1:]
        else:
            if not pos:
                errors.append(f"{where}: pos: no positive for select_positive '{strategy}' (from "
                              f"{recipe.source('select_positive')}); rows without positives need select_positive teacher")
                return None
            positives = pos[:1] if strategy == "first" else pos
            pos_scores = None if pos_scores is None else pos_scores[: len(positives)]
        if not neg and recipe.train_group_size > 1:
            if scores is not None:
                errors.append(f"{where}: neg: no negatives left to pair with teacher_scores (give more keys, or --train_group_size 1)")
                return None
            if corpus is None:
                errors.append(f"{where}: neg: no negatives and no --corpus to draw random ones from "
                              "(mine some with eval_retrieval --metrics collate_neg, or --train_group_size 1)")
                return None
            if len(corpus) <= len(self._positive_rows(positives, corpus)):
                errors.append(f"{where}: neg: no negatives and the corpus has no row besides the positives")
                return None
        query_id = record.get("query_id", rf.lines[i] if rf.lines else i + 1)
        return _Row(record["query"], query_id, positives, pos_scores, neg, neg_scores)

    def _positive_rows(self, positives: list, corpus: Corpus) -> set[int]:
        """Corpus rows that hold a positive: its own row, and every row with the same text (up to case
        and spacing, as mining compares), so a positive given as text is excluded too."""
        index = self._text_rows.get(id(corpus))
        if index is None:
            index = self._text_rows[id(corpus)] = {}
            for j, text in enumerate(corpus.texts):
                index.setdefault(normalize_text(text), []).append(j)
        rows = {p for p in positives if isinstance(p, int)}
        for p in positives:
            rows.update(index.get(normalize_text(self._text(p, corpus)), ()))
        return rows

    def _exclude_positive_rows(self, rows: list[_Row], corpus: Corpus) -> None:
        for row in rows:
            if not row.negatives:
                row.excluded = tuple(sorted(self._positive_rows(row.positives, corpus)))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def tasks(self) -> list[str]:
        """The task of each file (position = ``dataset`` field of items)."""
        return [tf.task for tf in self.files]

    @property
    def recipes(self) -> list[ResolvedRecipe]:
        """The resolved recipe of each file."""
        return [tf.recipe for tf in self.files]

    @property
    def paths(self) -> list[Path]:
        return [tf.path for tf in self.files]

    def locate(self, index: int) -> tuple[int, int]:
        """``(file position, row within file)`` of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} examples")
        f = bisect.bisect_right(self._offsets, index) - 1
        return f, index - self._offsets[f]

    @staticmethod
    def _text(ref, corpus: Corpus | None) -> str:
        return corpus.texts[ref] if isinstance(ref, int) else ref

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        epoch, index = (0, item) if isinstance(item, (int, np.integer)) else item
        epoch, index = int(epoch), int(index)
        f, r = self.locate(index)
        tf = self.files[f]
        row = tf.rows[r]
        recipe = tf.recipe
        rng = np.random.default_rng([self.seed, epoch, index])

        p = int(rng.integers(len(row.positives))) if len(row.positives) > 1 else 0
        keys = [row.positives[p]]
        scores = [row.pos_scores[p]] if row.pos_scores is not None else None

        n_neg = recipe.train_group_size - 1
        if n_neg > 0:
            if row.negatives:
                order = self._negative_order(row, recipe, n_neg, rng)
                negatives = [row.negatives[j] for j in order]
                neg_scores = [row.neg_scores[j] for j in order] if row.neg_scores is not None else None
            else:
                negatives, neg_scores = self._random_corpus_negatives(row, n_neg, rng, tf.corpus), None
            keys += negatives
            if scores is not None:
                scores += neg_scores
        return {
            "query": row.query,
            "keys": [self._text(k, tf.corpus) for k in keys],
            "teacher_scores": [float(s) for s in scores] if scores is not None else None,
            "task": tf.task,
            "dataset": f,
            "query_id": row.query_id,
        }

    @staticmethod
    def _negative_order(row: _Row, recipe: ResolvedRecipe, n_neg: int, rng: np.random.Generator) -> list[int]:
        """Positions of the ``n_neg`` negatives to use; cycled when the row has fewer than ``n_neg``."""
        n = len(row.negatives)
        if recipe.select_negative == "top":
            if row.neg_scores is not None:
                order = np.argsort(-np.asarray(row.neg_scores, dtype=np.float64), kind="stable")
            else:
                order = np.arange(n)
            return np.resize(order, n_neg).tolist()
        if n >= n_neg:
            return rng.choice(n, size=n_neg, replace=False).tolist()
        return np.resize(rng.permutation(n), n_neg).tolist()

    @staticmethod
    def _random_corpus_negatives(row: _Row, n_neg: int, rng: np.random.Generator, corpus: Corpus) -> list[int]:
        """``n_neg`` distinct random corpus rows that hold no positive (repeats if the corpus is tiny)."""
        excluded = set(row.excluded)
        size = len(corpus)
        available = size - len(excluded)
        want = min(n_neg + len(excluded), size)
        drawn = [int(j) for j in rng.choice(size, size=want, replace=False) if int(j) not in excluded][:n_neg]
        if len(drawn) < n_neg:  # fewer usable rows than negatives wanted
            drawn = np.resize(np.asarray(drawn[:available]), n_neg).tolist()
        return drawn
