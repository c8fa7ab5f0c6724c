"""``llm-embedder convert beir BEIR_DIR --output_dir DIR``: the command line of :mod:`llm_embedder.convert.beir`.

Every split is converted, and every problem in every split reported, before anything is written; then
``{split}.json`` and its ``{split}.meta.json`` sidecar (corpus, sources with sha256, options, counts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..argparsing import ArgParser
from ..errors import UserError, cli_guard
from ..resources import resolve_data_path
from ..schema import copy_atomic, meta_path, raise_if_errors, write_json, write_records
from .beir import BeirFolder, check_options, convert_beir_split, parse_grade, split_meta


def _grade_arg(text: str) -> int | float:
    try:
        return parse_grade(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number") from None


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(
        prog="llm-embedder convert beir",
        description="Convert a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) into schema records "
                    "{output_dir}/{split}.json that point at corpus rows, plus a {split}.meta.json sidecar.")
    p.add_argument("beir_dir", metavar="BEIR_DIR", help="BEIR folder (a path or llm-embedder:NAME)")
    p.add_argument("--output_dir", required=True, help="where {split}.json and {split}.meta.json are written")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to convert (qrels/<split>.tsv); default: every qrels file")
    p.add_argument("--min_score", type=_grade_arg, default=1, help="lowest qrel grade that makes a positive (default 1)")
    p.add_argument("--max_score", type=_grade_arg, default=None,
                   help="highest qrel grade that makes a positive (default: no limit); higher grades are dropped")
    p.add_argument("--below_min_as_negatives", action="store_true",
                   help="qrels graded under --min_score become negatives (neg_index) instead of being dropped")
    p.add_argument("--graded_as_teacher_scores", action="store_true",
                   help="write the qrel grades as teacher_scores aligned with pos + neg (distillation on labels)")
    p.add_argument("--extra_qrels", nargs="+", default=[], metavar="SPLIT=PATH",
                   help="more qrels (BEIR TSV or TREC) merged into SPLIT, e.g. train=mined_negatives.tsv")
    p.add_argument("--negatives_from", default=None, metavar="PATH",
                   help="schema file whose neg_ids (or neg_index) are added as negatives, matched by query_id")
    p.add_argument("--task", default="qa",
                   help="task name written into every record and the sidecar; it picks the LM-scoring template "
                        "(run_lm_score.py --template auto), the instructions and the loss recipe (default qa)")
    p.add_argument("--write_corpus", action="store_true",
                   help="copy corpus.jsonl to {output_dir}/corpus.json and point the records at the copy")
    return p


def _parse_extra(values: list[str], splits: list[str]) -> dict[str, list[Path]]:
    extra: dict[str, list[Path]] = {}
    for value in values:
        split, sep, path = value.partition("=")
        if not sep or not split or not path:
            raise UserError(f"--extra_qrels: {value!r} must look like SPLIT=PATH (e.g. train=negatives.tsv)")
        if split not in splits:
            raise UserError(f"--extra_qrels: split {split!r} is not converted (--splits {' '.join(splits)})")
        resolved = resolve_data_path(path)
        if not resolved.is_file():
            raise UserError(f"--extra_qrels: {resolved}: file not found")
        extra.setdefault(split, []).append(resolved)
    return extra


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args.min_score, args.max_score, args.graded_as_teacher_scores, args.negatives_from)
    if args.task is not None:
        from ..tasks import known_tasks

        if args.task not in known_tasks():
            raise UserError(f"--task: unknown task {args.task!r} (known: {', '.join(known_tasks())})")
    folder = BeirFolder.load(args.beir_dir)
    splits = args.splits or folder.splits()
    if not splits:
        raise UserError(f"BEIR_DIR: {folder.root} has no qrels/<split>.tsv files")
    for split in splits:
        if not folder.qrels_path(split).is_file():
            raise UserError(f"--splits: {folder.root} has no qrels/{split}.tsv (found: {', '.join(folder.splits()) or 'none'})")
    extra = _parse_extra(args.extra_qrels, splits)
    output_dir = resolve_data_path(args.output_dir)
    options = {"min_score": args.min_score, "max_score": args.max_score,
               "below_min_as_negatives": args.below_min_as_negatives,
               "graded_as_teacher_scores": args.graded_as_teacher_scores, "task": args.task}

    results, problems = [], []
    for split in splits:  # every split is converted (and every error in every split found) before anything is written
        try:
            results.append(convert_beir_split(folder, split, args.min_score, args.max_score,
                                              below_min_as_negatives=args.below_min_as_negatives,
                                              graded_as_teacher_scores=args.graded_as_teacher_scores,
                                              extra_qrels=extra.get(split, []), negatives_from=args.negatives_from,
                                              task=args.task))
        except UserError as err:
            problems.extend(str(err).splitlines())
    raise_if_errors(problems)

    corpus = folder.corpus_path
    if args.write_corpus:
        corpus = copy_atomic(folder.corpus_path, output_dir / "corpus.json")
    for result in results:
        out = write_records(output_dir / f"{result.split}.json", result.records)
        write_json(meta_path(out), split_meta(result, output_dir, corpus, len(folder.doc_ids), options))
        c = result.counts
        print(f"{result.split}: {c['records']} records ({c['positives']} positives, {c['negatives']} negatives) -> {out}")
        dropped = {k: c[k] for k in ("queries_without_positive", "below_min_score", "above_max_score",
                                     "conflicting_grades", "mined_negatives_dropped_judged_relevant") if c[k]}
        if dropped:
            print(f"  not used as positives: {', '.join(f'{k}={v}' for k, v in dropped.items())} (see {meta_path(out).name})")
    return 0
