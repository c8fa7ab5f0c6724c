"""``run_dense.py``: parse arguments, validate every input file, then train and evaluate.

All checks of user input (files, records, indices, task names, argument values) happen before the
model is loaded, so a mistake costs seconds, not a training run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import UserError, cli_guard
from .arguments import DataArguments, ModelArguments, RetrievalTrainingArguments, shuffle_seed

logger = logging.getLogger("llm_embedder.train")

CHOICES = {
    "select_positive": ("first", "random", "teacher"),
    "select_negative": ("random", "top"),
    "inbatch_same_dataset": ("epoch", "random"),
    "distill_loss": ("kl", "margin_mse"),
}


def build_parser():
    """The ``run_dense.py`` parser: the three dataclasses plus Tevatron's ``--untie_encoder`` (tie_encoders=False)."""
    from ..argparsing import BoolFlag, dataclass_parser

    parser = dataclass_parser((ModelArguments, DataArguments, RetrievalTrainingArguments), prog="run_dense.py")
    parser.add_argument("--untie_encoder", dest="tie_encoders", action=BoolFlag, invert=True, default=argparse.SUPPRESS,
                        help="Tevatron: a separate key encoder (same as --tie_encoders false)")
    return parser


def parse_args(argv=None):
    """Parse the command line (or one .json/.yaml file of arguments) into the three dataclasses.

    ``training_args.explicit_args`` is the frozenset of field names the user set (on the command line,
    under any alias, or as keys of the file), so a task recipe can tell a chosen value from a default.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loaded = parser.parse_json_file(argv[0]) if argv[0].endswith(".json") else parser.parse_yaml_file(argv[0])
        explicit = _file_keys(argv[0])
    else:
        explicit = parser.explicit_dests(parser.normalise_argv(argv))
        namespace, _ = parser.parse_known_args(argv)
        loaded = parser.parse_args_into_dataclasses(argv + implied_options(explicit, namespace))
    for args in loaded:  # every argument object: TrainDataArgs.from_args reads data and training fields
        args.explicit_args = frozenset(explicit)
    return loaded


def implied_options(explicit: frozenset[str], namespace) -> list[str]:
    """Options the reference's behaviour implies: ``--save_steps N`` alone saves every N steps, and with
    ``--eval_data`` evaluation follows the saving schedule (every ``save_steps``) unless set otherwise."""
    extra = []
    saving = getattr(namespace, "save_strategy", "no")
    if "save_steps" in explicit and "save_strategy" not in explicit:
        extra += ["--save_strategy", "steps"]
        saving = "steps"
    if getattr(namespace, "eval_data", None) and saving != "no" and "eval_strategy" not in explicit:
        extra += ["--eval_strategy", str(saving)]
        if saving == "steps" and "eval_steps" not in explicit:
            extra += ["--eval_steps", str(namespace.save_steps)]
    return extra


def phases(data_args: DataArguments, training_args: RetrievalTrainingArguments) -> tuple[bool, bool]:
    """``(train, evaluate)``: by default train when --train_data is given and evaluate when --eval_data is;
    an explicit ``--do_train`` / ``--do_eval`` (Hugging Face's flags) selects the phases instead."""
    explicit = getattr(training_args, "explicit_args", frozenset())
    train, evaluate = bool(data_args.train_data), bool(data_args.eval_data)
    if {"do_train", "do_eval"} & explicit:
        train, evaluate = training_args.do_train, training_args.do_eval
        if train and not data_args.train_data:
            raise UserError("--do_train: needs --train_data (the files to train on)")
        if evaluate and not data_args.eval_data:
            raise UserError("--do_eval: needs --eval_data (the records to evaluate on)")
        if not (train or evaluate):
            raise UserError("--do_train / --do_eval: both false, nothing to do")
    return train, evaluate


def _file_keys(path: str) -> frozenset[str]:
    import json

    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        return frozenset(json.loads(text))
    import yaml

    return frozenset(yaml.safe_load(text) or {})


def check_choices(*arg_objects) -> None:
    for obj in arg_objects:
        for name, allowed in CHOICES.items():
            value = getattr(obj, name, None)
            if value is not None and value not in allowed:
                raise UserError(f"--{name}: '{value}' is not one of {', '.join(allowed)}")


def load_inputs(model_args: ModelArguments, data_args: DataArguments, training_args: RetrievalTrainingArguments):
    """Read and validate the corpus, training and evaluation files (before any model is loaded).

    A records file whose ``.meta.json`` sidecar names a corpus (the converter writes one) uses that
    corpus; ``--corpus`` serves the files without one. Returns (corpus, train dataset or None, eval
    records or None, eval corpus or None).
    """
    from ..corpus import load_corpus
    from ..data.dataset import TrainDataArgs, TrainDataset
    from ..schema import read_records, sidecar_corpus
    from ..tasks import known_tasks, load_task_config

    check_choices(data_args, training_args)
    if model_args.task_config:
        load_task_config(model_args.task_config)
    if data_args.default_task not in known_tasks():
        raise UserError(f"--default_task: unknown task '{data_args.default_task}' (known: {', '.join(known_tasks())})")
    if not data_args.train_data and not data_args.eval_data:
        raise UserError("--train_data: give at least one training file (or --eval_data to only evaluate)")
    corpus = load_corpus(data_args.corpus, data_args.key_template) if data_args.corpus else None
    train_dataset = None
    if data_args.train_data:
        train_dataset = TrainDataset(data_args.train_data, corpus=corpus,
                                     args=TrainDataArgs.from_args(data_args, training_args), seed=shuffle_seed(training_args))
        from .model import task_losses

        task_losses(train_dataset.recipes, training_args.negative_cross_device)  # every loss term exists, before any model
    eval_file = eval_corpus = None
    if data_args.eval_data:
        named = sidecar_corpus(data_args.eval_data)
        same = named is None or (corpus is not None and corpus.path is not None and named.resolve() == corpus.path.resolve())
        eval_corpus = corpus if same else load_corpus(named, data_args.key_template)
        if eval_corpus is None and not data_args.eval_on_groups:
            raise UserError("--corpus: retrieval evaluation of --eval_data needs a corpus (or use --eval_on_groups)")
        eval_file = read_records(data_args.eval_data, purpose="eval", known_tasks=known_tasks(),
                                 corpus_size=len(eval_corpus) if eval_corpus is not None else None)
        if data_args.max_eval_queries:
            eval_file.records = eval_file.records[: data_args.max_eval_queries]
            eval_file.lines = eval_file.lines[: data_args.max_eval_queries]
    return corpus, train_dataset, eval_file, eval_corpus


def task_instructions(tasks: list[str], model_args: ModelArguments) -> dict[str, tuple[str, str]]:
    """{task: (query instruction, key instruction)} used in training and stored with the saved model: the
    registry's with ``--add_instruction``, replaced by Tevatron's ``--query_prefix`` / ``--passage_prefix``
    where given (which turn instructions on); empty otherwise. The task registry itself is not changed."""
    from ..tasks import get_task

    query_prefix, key_prefix = model_args.query_prefix, model_args.passage_prefix
    if not (model_args.add_instruction or query_prefix or key_prefix):
        return {}
    table = {}
    for t in tasks:
        recipe = get_task(t)
        table[t] = (recipe.query_instruction if query_prefix is None else query_prefix,
                    recipe.key_instruction if key_prefix is None else key_prefix)
    return table


def resolved_recipes(train_dataset) -> dict:
    """``{task: resolved recipe}`` (every field, its loss terms, and where each value came from)."""
    if train_dataset is None:
        return {}
    return {recipe.name: recipe.to_dict() for recipe in train_dataset.recipes}


def _public(values: dict) -> dict:
    return {k: v for k, v in values.items() if k != "explicit_args"}


def run_info(model_args, data_args, training_args) -> dict:
    """Arguments and library versions recorded next to every output."""
    from ..runinfo import versions

    return {
        "args": {"model": _public(vars(model_args)), "data": _public(vars(data_args)), "training": training_args.to_dict()},
        "explicit_args": sorted(getattr(training_args, "explicit_args", ()) or ()),
        "versions": versions(),
    }


def check_eval_backend(data_args, model_args, training_args) -> None:
    """A non-torch ``--encode_backend`` copies the fp32 weights on the CPU at every evaluation: refuse, before
    training, the runs where that cannot work (LoRA adapters, a GPU, ZeRO-3 shards)."""
    backend = data_args.encode_backend
    if backend == "torch":
        return
    if model_args.lora_rank or model_args.lora_adapter:
        raise UserError(f"--encode_backend {backend}: not with LoRA during training (evaluate the saved model instead)")
    if training_args.deepspeed or training_args.device.type != "cpu":
        raise UserError(f"--encode_backend {backend}: evaluation during training on the CPU only, without DeepSpeed; "
                        "use --encode_backend torch")


def build_trainer(model_args, data_args, training_args):
    """Validate inputs, load the encoder and assemble the trainer (no training yet)."""
    from ..data.collator import EmbedderCollator
    from ..modeling.encoder import DenseEncoder
    from ..modeling.quantization import quantization_config
    from ..retrieval.retriever import eval_task
    from .evaluation import RetrievalEvaluator
    from .trainer import EmbedderTrainer

    check_eval_backend(data_args, model_args, training_args)
    _, train_dataset, eval_file, eval_corpus = load_inputs(model_args, data_args, training_args)
    if training_args.deepspeed:
        from ..distributed import init_deepspeed_comm

        init_deepspeed_comm()  # before from_pretrained: ZeRO-3 partitions the weights while loading them
    from ..resources import resolve_encoder

    encoder = DenseEncoder.from_pretrained(
        resolve_encoder(model_args.model_name_or_path, cache=model_args.cache_dir), pooling_method=model_args.pooling_method, normalize=model_args.normalize,
        query_max_length=model_args.query_max_length, key_max_length=model_args.key_max_length,
        tie_encoders=model_args.tie_encoders, add_pooler=model_args.add_pooler,
        projection_out_dim=model_args.projection_out_dim, lora_rank=model_args.lora_rank,
        lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        lora_target_modules=model_args.lora_target_modules, append_eos=model_args.append_eos,
        quantization_config=quantization_config(model_args.load_in_4bit, model_args.load_in_8bit,
                                                model_args.lora_rank or bool(model_args.lora_adapter)),
        lora_adapter=model_args.lora_adapter, config_overrides=model_args.config_overrides,
    )
    encoder.split_by_length = training_args.split_batch_by_length
    encoder.fast_attention_dropout = training_args.fast_attention_dropout
    tasks = {data_args.default_task} | set(train_dataset.tasks if train_dataset is not None else [])
    if eval_file is not None:
        tasks |= {eval_file.records[0].get("task", data_args.default_task)}
    instructions = task_instructions(sorted(tasks), model_args)
    evaluator = None
    if eval_file is not None:
        evaluator = RetrievalEvaluator(
            eval_file, eval_corpus, data_args.metrics, data_args.cutoffs, task=eval_task(eval_file.records, None, data_args.default_task),
            add_instruction=bool(instructions), instruction_table=instructions, hits=data_args.hits,
            batch_size=training_args.per_device_eval_batch_size, corpus_subsample=data_args.eval_corpus_subsample,
            on_groups=data_args.eval_on_groups, seed=training_args.seed, encode_backend=data_args.encode_backend)
    trainer = EmbedderTrainer(
        model=encoder, args=training_args, train_dataset=train_dataset,
        # HF refuses --eval_strategy steps/epoch without an eval_dataset; our evaluate() reads the evaluator
        eval_dataset=eval_file.records if eval_file is not None else None,
        data_collator=EmbedderCollator(encoder, add_instruction=bool(instructions), instructions=instructions or None,
                                       tasks=sorted(tasks), default_task=data_args.default_task),
        evaluator=evaluator, sampler_mode=data_args.inbatch_same_dataset, dataset_weights=data_args.dataset_weights,
        instructions=instructions,
        run_info={**run_info(model_args, data_args, training_args), "recipes": resolved_recipes(train_dataset)},
    )
    return trainer


@cli_guard
def main(argv=None) -> dict:
    from ..noise import pop_verbose, quiet_third_party

    argv, verbose = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    quiet_third_party(verbose)  # before transformers' Trainer imports datasets and deepspeed
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO
                        if training_args.process_index == 0 else logging.WARNING)
    train, evaluate = phases(data_args, training_args)
    trainer = build_trainer(model_args, data_args, training_args)
    from ..io import write_json

    if trainer.is_world_process_zero():
        write_json(Path(training_args.output_dir) / "run_args.json", trainer.run_info)
        if trainer.run_info.get("recipes"):  # the loss and sampling each task trained with, with sources
            write_json(Path(training_args.output_dir) / "recipes.json", trainer.run_info["recipes"])
    metrics = {}
    if train and trainer.train_dataset is not None:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model(training_args.output_dir)
    if evaluate and trainer.evaluator is not None:
        metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            logger.info("final retrieval metrics (%s corpus): %s", trainer.evaluator.mode,
                        {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return metrics
