"""``llm-embedder convert tevatron``: Tevatron's training and corpus JSONL to schema files, and back.

Tevatron (v1 and v2) trains from JSONL rows ``{"query_id", "query", "positive_passages": [{"docid", "title",
"text"}], "negative_passages": [...]}`` and encodes a corpus of ``{"docid", "title", "text"}`` rows.

- ``--to schema`` (default): training rows become ``{"query_id", "query", "pos", "neg", "pos_ids", "neg_ids"}``
  (key text = title and text, as our corpus reader builds it). With ``--corpus`` the passages are looked up by
  docid and written as ``pos_index``/``neg_index`` instead of texts, with a ``.meta.json`` sidecar naming the
  corpus, so training and evaluation read the corpus once. Other fields of a row are kept.
- ``--to tevatron``: schema records become Tevatron rows (keys given by index are taken from the corpus, which
  ``--corpus`` or the records' sidecar names; keys given as text get ``title ""`` and the docid from
  ``pos_ids``/``neg_ids`` when present).
- ``--kind corpus``: a corpus file in either direction (``_id`` <-> ``docid``; title and text kept).

Every row is checked before anything is written; problems are reported as ``file:line: field: what``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..argparsing import ArgParser
from ..corpus import default_key_text, load_corpus, row_id
from ..errors import UserError, cli_guard
from ..paths import portable_path
from ..resources import resolve_data_path
from ..schema import meta_path, raise_if_errors, read_json_objects, read_records, sidecar_corpus, write_json, write_records

PASSAGE_FIELDS = {"positive_passages": ("pos", "pos_ids", "pos_index"), "negative_passages": ("neg", "neg_ids", "neg_index")}


def _passage_problem(passage) -> str | None:
    if not isinstance(passage, dict):
        return f"expected an object with docid/title/text, got {type(passage).__name__}"
    if not isinstance(passage.get("text", ""), str) or not isinstance(passage.get("title", ""), str):
        return "title and text must be strings"
    if "text" not in passage and "docid" not in passage:
        return "needs text or docid"
    return None


def records_from_tevatron(rows: list[dict], lines: list[int], path: Path, id_to_row: dict[str, int] | None = None,
                          task: str | None = None) -> list[dict]:
    """Schema records from Tevatron training rows (see the module docstring); all problems in one UserError."""
    records, errors = [], []
    for row, line in zip(rows, lines):
        where = f"{path}:{line}"
        if not isinstance(row.get("query"), str) or not row.get("query").strip():
            errors.append(f"{where}: query: missing or empty")
            continue
        record = {k: v for k, v in row.items() if k not in PASSAGE_FIELDS}
        for field, (text_field, ids_field, index_field) in PASSAGE_FIELDS.items():
            passages = row.get(field, [])
            if not isinstance(passages, list):
                errors.append(f"{where}: {field}: expected a list")
                continue
            problems = [(i, _passage_problem(p)) for i, p in enumerate(passages)]
            problems = [(i, p) for i, p in problems if p]
            if problems:
                errors.append(f"{where}: {field}[{problems[0][0]}]: {problems[0][1]}")
                continue
            ids = [str(p["docid"]) for p in passages if "docid" in p]
            if id_to_row is not None:
                missing = [d for d in ids if d not in id_to_row]
                if len(ids) < len(passages) or missing:
                    errors.append(f"{where}: {field}: docid {missing[0] if missing else '(none)'} is not in --corpus")
                    continue
                record[index_field] = [id_to_row[d] for d in ids]
            else:
                record[text_field] = [default_key_text(p) or "" for p in passages]
            if len(ids) == len(passages) and ids:
                record[ids_field] = ids
        if task:
            record["task"] = task
        records.append(record)
    raise_if_errors(errors)
    return records


def tevatron_from_records(records: list[dict], corpus=None) -> list[dict]:
    """Tevatron training rows from schema records (keys by index need ``corpus`` with ``keep_rows``)."""
    out = []
    for record in records:
        row = {k: v for k, v in record.items() if k not in {f for fields in PASSAGE_FIELDS.values() for f in fields}}
        row.setdefault("query_id", str(len(out)))
        for field, (text_field, ids_field, index_field) in PASSAGE_FIELDS.items():
            passages = []
            if record.get(index_field):
                for r in record[index_field]:
                    source = corpus.rows[r]
                    passages.append({"docid": corpus.ids[r], "title": source.get("title", ""),
                                     "text": source.get("text", corpus.texts[r])})
            else:
                ids = record.get(ids_field) or []
                for i, text in enumerate(record.get(text_field) or []):
                    passages.append({"docid": str(ids[i]) if i < len(ids) else "", "title": "", "text": text})
            row[field] = passages
        out.append(row)
    return out


def convert_corpus(path: Path, to: str) -> list[dict]:
    """Corpus rows with ``docid`` (Tevatron) or ``_id`` (ours / BEIR); title and text kept."""
    _, rows, _ = read_json_objects(path)
    id_field = "docid" if to == "tevatron" else "_id"
    return [{id_field: row_id(row, i), **{k: v for k, v in row.items() if k not in ("_id", "id", "docid", "doc_id")}}
            for i, row in enumerate(rows)]


def build_parser() -> ArgParser:
    p = ArgParser(prog="llm-embedder convert tevatron", description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="INPUT", help="Tevatron training JSONL (--to schema), schema records (--to tevatron), or a corpus (--kind corpus)")
    p.add_argument("--output", required=True, help="file to write (JSONL)")
    p.add_argument("--to", choices=("schema", "tevatron"), default="schema", help="direction (default: schema)")
    p.add_argument("--kind", choices=("train", "corpus"), default="train", help="what INPUT holds")
    p.add_argument("--corpus", default=None, help="corpus JSONL: --to schema writes row indices into it; "
                   "--to tevatron reads keys given by index from it (default: the records' sidecar corpus)")
    p.add_argument("--task", default=None, help="--to schema: write this task into every record (e.g. qa)")
    return p


@cli_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    source, output = resolve_data_path(args.input), Path(args.output)
    if output.resolve() == source.resolve():
        raise UserError("--output: must differ from INPUT")
    if args.kind == "corpus":
        rows = convert_corpus(source, args.to)
        write_records(output, rows)
        print(f"wrote {output}: {len(rows)} corpus rows")
        return 0
    if args.to == "schema":
        path, rows, lines = read_json_objects(source)
        corpus = load_corpus(resolve_data_path(args.corpus)) if args.corpus else None
        records = records_from_tevatron(rows, lines, path, corpus.id_to_row() if corpus else None, args.task)
        write_records(output, records)
        if corpus is not None:
            write_json(meta_path(output), {"converted_from": "tevatron", "source": str(path.resolve()),
                                           "corpus": portable_path(corpus.path, output.parent), "corpus_rows": len(corpus)})
        print(f"wrote {output}: {len(records)} records" + (f" pointing into {corpus.path}" if corpus else ""))
        return 0
    rf = read_records(source, purpose="any")
    named = resolve_data_path(args.corpus) if args.corpus else sidecar_corpus(source)
    needs_corpus = any(r.get("pos_index") or r.get("neg_index") for r in rf.records)
    if needs_corpus and named is None:
        raise UserError(f"--corpus: {source} gives keys by index; name the corpus they index")
    corpus = load_corpus(named, keep_rows=True) if needs_corpus else None
    if corpus is not None:
        raise_if_errors([f"{rf.path}:{line}: {field}: row {r} is beyond the corpus ({len(corpus)} rows)"
                         for record, line in zip(rf.records, rf.lines) for field in ("pos_index", "neg_index")
                         for r in record.get(field) or [] if not 0 <= r < len(corpus)])
    rows = tevatron_from_records(rf.records, corpus)
    write_records(output, rows)
    print(f"wrote {output}: {len(rows)} Tevatron training rows")
    return 0
