"""``llm-embedder validate FILE...``: check schema files before any run and report every problem.

Each file is read whole and checked for the given ``--purpose`` (train / eval / score / any); with
``--corpus`` (or the corpus named by a converter's ``{name}.meta.json`` sidecar) ``pos_index``/``neg_index``
are checked against the corpus size, ``pos_ids``/``neg_ids`` against the row ids, and every corpus row
against ``--key_template``. A good file prints ``OK file (N records, tasks: ...)``; a bad one prints each
problem as ``file:line: field: what is wrong``. Exit status 0 when all files are good, 1 otherwise, and 2
for bad arguments.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from .corpus import Corpus, load_corpus
from .argparsing import ArgParser
from .errors import UserError, cli_guard
from .resources import resolve_data_path
from .schema import PURPOSES, file_problems, parse_json_file, sidecar_corpus, RecordFile


def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="llm-embedder validate",
                                description="Check schema files and report every problem as file:line: field: what.")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL (or JSON array) record files")
    p.add_argument("--purpose", choices=PURPOSES, default="any",
                   help="train: needs keys and a positive or teacher_scores; eval: needs a positive; "
                        "score: needs keys; any: types and consistency only (default)")
    p.add_argument("--corpus", default=None,
                   help="corpus JSONL the *_index fields point into (default: the one in FILE's .meta.json sidecar)")
    p.add_argument("--key_template", default=None, help='template for corpus rows, e.g. "{title} {text}"')
    p.add_argument("--task_config", default=None, help="JSON/YAML file registering custom tasks")
    return p


class CorpusCache:
    """Loads each corpus once (files of one dataset usually share it)."""

    def __init__(self, key_template: str | None):
        self.key_template = key_template
        self.loaded: dict[Path, Corpus | list[str]] = {}

    def get(self, path: Path) -> Corpus | list[str]:
        """The corpus, or its problems as lines."""
        path = Path(path)
        if path not in self.loaded:
            try:
                self.loaded[path] = load_corpus(path, self.key_template)
            except UserError as err:
                self.loaded[path] = str(err).splitlines()
        return self.loaded[path]


BEIR_HINT = "convert it first: llm-embedder convert beir {folder} --output_dir DIR (then validate DIR/<split>.json)"


def beir_layout(path: Path, records: list[dict] | None = None) -> str | None:
    """A one-line explanation when ``path`` is a BEIR folder, or a BEIR ``corpus.jsonl`` / ``queries.jsonl``
    (rows with ``_id`` and ``text`` but no ``query``), instead of a schema file; None otherwise."""
    if path.is_dir():
        if (path / "corpus.jsonl").is_file() and (path / "queries.jsonl").is_file():
            return f"{path}: is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/), not a schema file; " + \
                BEIR_HINT.format(folder=path)
        return f"{path}: is a folder; pass schema files (JSON lines with a 'query' field)"
    if records and all("_id" in r and "text" in r and "query" not in r for r in records):
        kind = "queries" if path.name.startswith("queries") else "corpus"
        role = "the corpus (rows are keys)" if kind == "corpus" else "the queries"
        return f"{path}: is a BEIR {kind} file (rows with _id and text, no query): it is {role} of a BEIR folder, " \
               "not schema records; " + BEIR_HINT.format(folder=path.parent)
    return None


def check_file(path: str, purpose: str, known: list[str], corpus_arg: Path | None,
               corpora: CorpusCache) -> tuple[bool, list[str]]:
    """``(ok, lines to print)`` for one file."""
    hint = beir_layout(resolve_data_path(path))
    if hint is not None:
        return False, [hint]
    try:
        corpus_path = corpus_arg or sidecar_corpus(path)
        rpath, records, lines, parse_problems = parse_json_file(path)
    except UserError as err:
        return False, str(err).splitlines()
    hint = beir_layout(rpath, records)
    if hint is not None:
        return False, [hint]
    corpus = None
    if corpus_path is not None:
        corpus = corpora.get(corpus_path)
        if isinstance(corpus, list):
            return False, [f"{rpath}: corpus {corpus_path} is not usable:"] + corpus
    elif corpora.key_template is not None:
        return False, [f"{rpath}: --key_template needs a corpus: pass --corpus"]
    rf = RecordFile(rpath, records, lines)
    problems = file_problems(rf, parse_problems, purpose=purpose, known_tasks=known,
                             corpus_ids=corpus.ids if corpus is not None else None)
    if problems:
        return False, problems
    tasks = Counter(r.get("task", "(none)") for r in records)
    task_text = ", ".join(f"{t} {n}" if len(tasks) > 1 else t for t, n in sorted(tasks.items()))
    corpus_text = f", corpus: {corpus_path} ({len(corpus)} rows)" if corpus is not None else ""
    return True, [f"OK {rpath} ({len(records)} records, tasks: {task_text}{corpus_text})"]


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .tasks import known_tasks, load_task_config

    if args.task_config is not None:
        load_task_config(args.task_config)
    corpus_arg = None
    if args.corpus is not None:
        corpus_arg = resolve_data_path(args.corpus)
        if not corpus_arg.is_file():
            raise UserError(f"--corpus: {corpus_arg}: file not found")
    corpora = CorpusCache(args.key_template)
    if args.key_template is not None:
        from .corpus import template_fields

        template_fields(args.key_template)  # a malformed template is an argument error, before any file is read
    known = known_tasks()
    all_ok = True
    for path in args.files:
        ok, lines = check_file(path, args.purpose, known, corpus_arg, corpora)
        all_ok &= ok
        print("\n".join(lines), flush=True)
    return 0 if all_ok else 1
