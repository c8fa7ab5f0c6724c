"""``llm-embedder convert trove CONFIG``: a Trove-style qrels config (``MaterializedQRelConfig`` fields) to schema records.

The config (YAML or JSON) names the files the way Trove does: ``qrel_path`` (BEIR TSV or TREC qrels),
``query_path`` (``{_id, text}`` JSONL), ``corpus_path`` (``{_id|docid, title, text}`` JSONL) and optional
``min_score`` / ``max_score`` (the grades that make a positive). Paths are relative to the config file.
The conversion is the BEIR converter's (same rules, same ``.meta.json`` sidecar naming the corpus).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..argparsing import ArgParser
from ..corpus import ids_to_rows, read_corpus_ids
from ..errors import UserError, cli_guard
from ..resources import resolve_data_path
from ..schema import meta_path, write_json, write_records
from .beir import BeirFolder, convert_beir_split, read_queries, split_meta

REQUIRED = ("qrel_path", "query_path", "corpus_path")
KNOWN = REQUIRED + ("min_score", "max_score")


class ConfigFolder(BeirFolder):
    """A BEIR folder whose files are named by a Trove config instead of the BEIR layout."""

    qrels_file: Path

    def qrels_path(self, split: str) -> Path:
        return self.qrels_file

    def splits(self) -> list[str]:
        return [self.qrels_file.stem]


def load_config(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise UserError(f"{path}: a Trove qrels config is one mapping with {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if not config.get(k)]
    unknown = sorted(set(config) - set(KNOWN))
    if missing or unknown:
        raise UserError(f"{path}: {missing[0]}: required" if missing else
                        f"{path}: {unknown[0]}: not a qrels-config field here (known: {', '.join(KNOWN)})")
    return config


def folder_from_config(config: dict, base: Path) -> ConfigFolder:
    paths = {k: resolve_data_path(base / config[k]) for k in REQUIRED}
    for key, p in paths.items():
        if not p.is_file():
            raise UserError(f"{key}: {p}: file not found")
    corpus_path, doc_ids = read_corpus_ids(paths["corpus_path"])
    folder = ConfigFolder(base, corpus_path, paths["query_path"], doc_ids, ids_to_rows(doc_ids, corpus_path),
                          read_queries(paths["query_path"]))
    folder.qrels_file = paths["qrel_path"]
    return folder


@cli_guard
def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="llm-embedder convert trove", description=__doc__.split("\n\n")[0])
    p.add_argument("config", metavar="CONFIG", help="YAML/JSON file with qrel_path, query_path, corpus_path [, min_score, max_score]")
    p.add_argument("--output", required=True, help="schema records to write (a .meta.json sidecar goes beside it)")
    p.add_argument("--task", default=None, help="write this task name into every record")
    args = p.parse_args(argv)
    config_path = resolve_data_path(args.config)
    if not config_path.is_file():
        raise UserError(f"CONFIG: {config_path}: file not found")
    config = load_config(config_path)
    folder = folder_from_config(config, config_path.parent)
    min_score, max_score = config.get("min_score", 1), config.get("max_score")
    result = convert_beir_split(folder, folder.qrels_file.stem, min_score, max_score, task=args.task)
    out = write_records(Path(args.output), result.records)
    meta = split_meta(result, out.parent, folder.corpus_path, len(folder.doc_ids),
                      {"min_score": min_score, "max_score": max_score, "task": args.task})
    meta.update(converted_from="trove-qrels-config", records=out.name, config=str(config_path.resolve()))
    write_json(meta_path(out), meta)
    print(f"wrote {out}: {result.counts['records']} records ({result.counts['positives']} positives)")
    return 0
