"""The generated tables of docs/migration.md: reference defaults vs ours, and every peer flag we accept.

``python -m llm_embedder.migration`` rewrites the blocks between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` in docs/migration.md from the code (the argument dataclasses and the CLI
parsers); ``--check`` exits 1 when the doc is stale (a test runs it). Every reference-named argument whose
default differs from the reference's must have its reason in :data:`REASONS` (a test checks that too).
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from .argparsing import ArgParser

# The reference's defaults (FlagEmbedding research/llm_embedder src/retrieval/args.py: RetrievalArgs and
# RetrievalTrainingArgs, as run_dense.py parses them; HF TrainingArguments where it sets none).
REFERENCE_RUN_DENSE = {
    "model_name_or_path": ("--query_encoder", "BAAI/bge-base-en"),
    "train_data": None, "eval_data": None, "corpus": None, "key_template": "{title} {text}",
    "metrics": ["mrr", "recall", "ndcg"], "cutoffs": [1, 5, 10, 100], "hits": 200,
    "add_instruction": True, "query_max_length": 256, "key_max_length": 256, "pooling_method": ["cls"],
    "tie_encoders": True, "output_dir": "data/outputs/", "inbatch_same_dataset": None, "negative_cross_device": True,
    "cos_temperature": 0.01, "teacher_temperature": 1.0, "student_temperature": 1.0, "contrastive_weight": 0.2,
    "distill_weight": 1.0, "stable_distill": False, "max_sample_num": None, "train_group_size": 8,
    "select_positive": "first", "select_negative": "random", "teacher_scores_margin": None, "teacher_scores_min": None,
    "per_device_train_batch_size": 16, "learning_rate": 5e-6, "warmup_ratio": 0.1, "weight_decay": 0.01,
    "fp16": True, "remove_unused_columns": False, "eval_strategy": ("--evaluation_strategy", "steps"),
    "save_strategy": "steps", "save_steps": 2000, "logging_steps": 100, "report_to": "none",
}
# evaluation/eval_retrieval.py (RetrievalArgs)
REFERENCE_EVAL = {
    "eval_data": None, "corpus": None, "key_template": "{title} {text}", "metrics": ["mrr", "recall", "ndcg"],
    "cutoffs": [1, 5, 10, 100], "filter_answers": False, "max_neg_num": 100, "save_name": None,
    "query_encoder": "BAAI/bge-base-en", "add_instruction": True, "query_max_length": 256, "key_max_length": 256,
    "pooling_method": ["cls"], "hits": 200, "batch_size": 1000, "retrieval_method": "dense",
}

MODEL_DEFAULT = "the model's own setting (saved llm-embedder or sentence-transformers config) wins; the reference forces its value on every model"
REASONS = {
    "model_name_or_path": "a default that works offline; pass `BAAI/bge-base-en` (a hub id, resolved like `from_pretrained`)",
    "query_encoder": "a default that works offline; pass `--query_encoder BAAI/bge-base-en`",
    "key_template": "`None` builds `title text` from the row as `{title} {text}` does, and also reads corpora with `contents`/`body` fields",
    "query_max_length": f"{MODEL_DEFAULT}; 256 otherwise, as the reference",
    "key_max_length": f"{MODEL_DEFAULT}; 256 otherwise, as the reference",
    "pooling_method": f"{MODEL_DEFAULT} (BGE's saved config says CLS, MiniLM's mean); mean otherwise",
    "tie_encoders": f"{MODEL_DEFAULT}; True otherwise, as the reference",
    "output_dir": "required: a run never writes into a silent default folder",
    "inbatch_same_dataset": "batches are always task-homogeneous (the LLM-Embedder recipe); mixed-task batches are not implemented",
    "contrastive_weight": "weights are applied as given here; the reference's 0.2 is ignored by its loss when contrastive is the "
                          "only active loss and applied when distillation is on. A default of 0.2 applied as given would scale "
                          "every contrastive-only run's gradient by 0.2. Pass `--contrastive_weight 0.2` for the reference's mixed-loss weighting",
    "fp16": "fp32 master weights by default (`--bf16` or `--fp16` opt-in): fp16 by default fails on CPU and overflows the 1/τ=100 logits",
    "eval_strategy": "evaluation follows `--save_strategy` when `--eval_data` is given (every `save_steps`, as the reference "
                     "did before it stopped tying them), and never runs without an eval file",
    "save_strategy": "no checkpoints unless asked: `--save_steps N` alone turns on step saving (the reference saved every 2000 steps)",
    "report_to": "same behaviour: our `[\"none\"]` is the list form of the reference's `\"none\"`",
    "add_instruction": "eval_retrieval: not given = the saved model's own instructions (a model trained with instructions "
                       "carries them), `true` = the task registry's, `false` = none",
    "batch_size": "a CPU-sized encoding batch; pass `--batch_size 1000` on a GPU",
}


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _fmt(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, list):
        return "`" + " ".join(str(v) for v in value) + "`"
    if hasattr(value, "value"):  # enums of TrainingArguments
        return f"`{value.value}`"
    return f"`{value}`"


def _same(ours, theirs) -> bool:
    ours = getattr(ours, "value", ours)
    if isinstance(ours, list) and len(ours) == 1 and not isinstance(theirs, list):
        ours = ours[0]
    return ours == theirs


def run_dense_defaults() -> dict:
    from .training.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments

    fields = {f.name: f for cls in (ModelArguments, DataArguments, RetrievalTrainingArguments)
              for f in dataclasses.fields(cls) if f.init}
    return {name: _default(fields[name]) for name in REFERENCE_RUN_DENSE}


def eval_defaults() -> dict:
    from .retrieval.eval_cli import build_parser

    actions = {a.dest: a for a in build_parser()._actions}
    return {name: actions[name].default for name in REFERENCE_EVAL}


def differences(reference: dict, ours: dict) -> list[str]:
    """Names whose default differs from the reference's."""
    out = []
    for name, theirs in reference.items():
        theirs = theirs[1] if isinstance(theirs, tuple) else theirs
        if not _same(ours[name], theirs):
            out.append(name)
    return out


def defaults_table(reference: dict, ours: dict) -> str:
    rows = ["| argument | reference default | our default | why they differ |", "|---|---|---|---|"]
    for name, theirs in reference.items():
        flag = f"`--{name}`"
        if isinstance(theirs, tuple):
            flag, theirs = f"`{theirs[0]}` (ours: `--{name}`)", theirs[1]
        same = _same(ours[name], theirs)
        reason = "" if same else REASONS.get(name, "**no reason recorded**")
        rows.append(f"| {flag} | {_fmt(theirs)} | {_fmt(ours[name])} | {reason} |")
    return "\n".join(rows)


def alias_table(peer: str) -> str:
    """Every flag of ``peer`` that a CLI of ours accepts, with the option it means."""
    from .argparsing import peer_aliases
    from .training.arguments import DataArguments, ModelArguments, RetrievalTrainingArguments

    rows = [(f"`{flag}`", "run_dense.py", f"`--{field}`") for p, flag, field in
            peer_aliases((ModelArguments, DataArguments, RetrievalTrainingArguments)) if p == peer]
    rows += [(f"`{flag}`", where, ours) for p, flag, where, ours in CLI_ALIASES if p == peer]
    lines = ["| their flag | our command | our option |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


# aliases declared directly in argparse CLIs (encode, search) or as special actions (run_dense)
CLI_ALIASES = [
    ("tevatron", "--untie_encoder", "run_dense.py", "`--tie_encoders false`"),
    ("tevatron", "--encode_is_query", "llm-embedder encode", "`--side query`"),
    ("tevatron", "--encode_is_qry", "llm-embedder encode", "`--side query`"),
    ("tevatron", "--encode_output_path", "llm-embedder encode", "`--output` (a `.pkl` suffix is dropped: we write `.npy` + `.json`)"),
    ("tevatron", "--encoded_save_path", "llm-embedder encode", "`--output`"),
    ("tevatron", "--dataset_number_of_shards", "llm-embedder encode", "`--num_shards`"),
    ("tevatron", "--encode_num_shard", "llm-embedder encode", "`--num_shards`"),
    ("tevatron", "--dataset_shard_index", "llm-embedder encode", "`--shard_index`"),
    ("tevatron", "--encode_shard_index", "llm-embedder encode", "`--shard_index`"),
    ("tevatron", "--dataset_path", "llm-embedder encode", "`--input`"),
    ("tevatron", "--encode_in_path", "llm-embedder encode", "`--input`"),
    ("tevatron", "--model_name_or_path", "llm-embedder encode", "`--model`"),
    ("tevatron", "--per_device_eval_batch_size", "llm-embedder encode", "`--batch_size`"),
    ("tevatron", "--append_eos_token", "llm-embedder encode", "`--append_eos_token`"),
    ("tevatron", "--query_reps", "llm-embedder search", "`--query_emb` (`x.pkl` means `x.npy`)"),
    ("tevatron", "--passage_reps", "llm-embedder search", "`--key_emb` (globs expanded; `.pkl` means `.npy`)"),
    ("tevatron", "--save_ranking_to", "llm-embedder search", "`--output`"),
    ("tevatron", "--save_text", "llm-embedder search", "`--format tsv`"),
    ("tevatron", "--batch_size", "llm-embedder search", "`--query_chunk` (`-1`: all queries at once)"),
]

BLOCKS = {
    "reference-run-dense": lambda: defaults_table(REFERENCE_RUN_DENSE, run_dense_defaults()),
    "reference-eval": lambda: defaults_table(REFERENCE_EVAL, eval_defaults()),
    "aliases-tevatron": lambda: alias_table("tevatron"),
    "aliases-trove": lambda: alias_table("trove"),
    "aliases-flagembedding": lambda: alias_table("flagembedding"),
    "aliases-reference": lambda: alias_table("reference"),
}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/migration.md has no block {name}")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    from .resources import project_root

    p = ArgParser(prog="python -m llm_embedder.migration", description=__doc__.splitlines()[0])
    p.add_argument("--doc", default=str(project_root() / "docs" / "migration.md"))
    p.add_argument("--check", action="store_true", help="exit 1 if the doc is not current")
    args = p.parse_args(argv)
    path = Path(args.doc)
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{path} is stale: run python -m llm_embedder.migration", file=sys.stderr)
            return 1
        return 0
    if new != text:
        from .io import atomic_write

        atomic_write(path, lambda out: out.write(new))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
