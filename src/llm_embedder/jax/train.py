"""``python -m llm_embedder.jax.train``: the JAX trainer, with run_dense.py's data / model / loss arguments.

Inputs are validated by the torch trainer's own ``load_inputs`` (before any model load or compilation),
batches come from :mod:`.data`, the step from :mod:`.step`; checkpoints (``--save_steps``) go to
``<output_dir>/checkpoints`` (orbax) and ``--resume_from_checkpoint`` (a checkpoint folder, or ``true``/
``latest`` for the output directory's own) continues exactly. The trained model is exported to
``--output_dir`` in the torch trainer's format and, with ``--eval_data``, evaluated by the same evaluator.
``python -m llm_embedder.jax.train --encode ...`` runs the JAX corpus encoder instead (see :mod:`.encode`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

from ..errors import UserError, cli_guard

logger = logging.getLogger("llm_embedder.jax.train")


def parse_args(argv=None):
    """run_dense.py's shared parser (peer aliases, no prefix matching, one-line errors) over the JAX options."""
    from ..argparsing import dataclass_parser
    from ..training.arguments import DataArguments, ModelArguments
    from .arguments import JaxTrainingArguments

    parser = dataclass_parser((ModelArguments, DataArguments, JaxTrainingArguments), prog="llm_embedder.jax.train")
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        loaded = parser.parse_json_file(argv[0])
        explicit = frozenset(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    else:
        loaded = parser.parse_args_into_dataclasses(argv)
        explicit = frozenset(parser.explicit_dests(parser.normalise_argv(argv)))
    loaded[2].explicit_args = explicit  # a task recipe takes only the loss settings the user chose
    return loaded


def check_args(model_args, args) -> None:
    """Option values the JAX trainer cannot honour: one line each, before anything is loaded."""
    if model_args.lora_rank or getattr(model_args, "lora", False):
        raise UserError("--lora_rank: LoRA is not implemented in the JAX trainer (use run_dense.py)")
    if model_args.add_pooler or model_args.projection_out_dim:
        raise UserError("--add_pooler: the JAX trainer has no projection layer")
    if args.per_device_train_batch_size < 1:
        raise UserError(f"--per_device_train_batch_size: must be >= 1, got {args.per_device_train_batch_size}")
    if args.gradient_accumulation_steps < 1:
        raise UserError(f"--gradient_accumulation_steps: must be >= 1, got {args.gradient_accumulation_steps}")
    if not args.grad_cache and (args.query_num_chunks != 1 or args.passage_num_chunks != 1):
        raise UserError("--query_num_chunks / --passage_num_chunks: only used with --grad_cache")


@dataclasses.dataclass
class Run:
    """Everything a training loop needs, built from the arguments (see :func:`build`)."""

    loaded: object
    dataset: object
    stream: object
    step: object
    embed: object
    options_for: object
    total_steps: int
    args: object
    checkpoints: object
    eval_inputs: tuple
    instructions: dict


def build(model_args, data_args, args) -> Run:
    import jax

    from ..data.collator import EmbedderCollator
    from ..training.arguments import shuffle_seed
    from ..training.model import task_losses
    from ..training.trainer import loss_params_from_args
    from ..training.run import load_inputs, task_instructions
    from .checkpoint import Checkpoints
    from .data import BatchStream, BucketTokenizer
    from .losses import task_terms
    from .step import Embedder, StepOptions, TrainStep, check_batch_layout, make_mesh, make_optimizer
    from .weights import load_encoder

    check_args(model_args, args)
    if args.jax_distributed:  # every host runs this command; each builds the same global batch (seeded plan)
        jax.distributed.initialize()
    if not data_args.train_data:
        raise UserError("--train_data: the JAX trainer needs training files")
    default = task_terms(loss_params_from_args(args))
    mesh = make_mesh(args.mesh_shape)
    global_batch = args.per_device_train_batch_size * mesh.size
    _, dataset, eval_file, eval_corpus = load_inputs(model_args, data_args, args)
    per_task = {task: task_terms(loss) for task, loss in task_losses(dataset.recipes, args.negative_cross_device).items()}
    per_device = 1 if args.negative_cross_device else mesh.size  # own-slice losses, as DDP without gathering

    def options_for(batch) -> StepOptions:
        return StepOptions(batch.group_size, batch.has_teacher, per_task.get(batch.task, default),
                           per_device_groups=per_device, grad_cache=args.grad_cache,
                           query_num_chunks=args.query_num_chunks, passage_num_chunks=args.passage_num_chunks)

    for recipe in dataset.recipes:  # batch layout errors before loading or compiling anything
        check_batch_layout(global_batch, recipe.train_group_size, mesh,
                           StepOptions(recipe.train_group_size, False, (), grad_cache=args.grad_cache,
                                       query_num_chunks=args.query_num_chunks, passage_num_chunks=args.passage_num_chunks))
    loaded = load_encoder(model_args.model_name_or_path, pooling_method=model_args.pooling_method,
                          normalize=model_args.normalize, query_max_length=model_args.query_max_length,
                          key_max_length=model_args.key_max_length, tie_encoders=model_args.tie_encoders,
                          seed=args.seed)
    loaded.model.set_gradient_checkpointing(args.gradient_checkpointing)
    tasks = sorted({data_args.default_task} | set(dataset.tasks))
    instructions = task_instructions(tasks, model_args)  # the registry's, or --query_prefix/--passage_prefix
    tokenizer = BucketTokenizer(loaded.tokenizer, {"query": loaded.settings["query_max_length"],
                                                   "key": loaded.settings["key_max_length"]})
    collator = EmbedderCollator(tokenizer, add_instruction=bool(instructions), instructions=instructions or None,
                                tasks=tasks, default_task=data_args.default_task)
    stream = BatchStream(dataset, collator, global_batch, shuffle_seed(args), data_args.inbatch_same_dataset, data_args.dataset_weights)
    updates_per_epoch = max(len(stream) // args.gradient_accumulation_steps, 1)
    total = args.max_steps if args.max_steps and args.max_steps > 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
    warmup = args.warmup_steps or math.ceil((args.warmup_ratio or 0.0) * total)
    embed = Embedder(loaded.model)
    tx = make_optimizer(embed.params, args.learning_rate, total, int(warmup), args.weight_decay, args.max_grad_norm,
                        args.gradient_accumulation_steps, args.adam_beta1, args.adam_beta2, args.adam_epsilon)
    logger.info("JAX %s on %d %s device(s); %d steps of %d queries (%d x %d accumulation), %d per epoch",
                jax.__version__, mesh.size, mesh.devices.flat[0].platform, total, global_batch * args.gradient_accumulation_steps,
                global_batch, args.gradient_accumulation_steps, updates_per_epoch)
    checkpoints = Checkpoints(Path(args.output_dir) / "checkpoints", args.save_total_limit)
    return Run(loaded, dataset, stream, TrainStep(embed, tx, mesh), embed, options_for, total, args, checkpoints,
               (eval_file, eval_corpus), instructions)


def _resume(run: Run, state):
    """``(state, step, batches consumed in the epoch)`` from --resume_from_checkpoint, else ``(state, 0, 0)``."""
    from .checkpoint import Checkpoints

    where = run.args.resume_from_checkpoint
    if not where or str(where).lower() in ("false", "no"):
        return state, 0, 0
    checkpoints = run.checkpoints if str(where).lower() in ("true", "latest") else None
    step = None
    if checkpoints is None:
        path = Path(where)
        if not path.is_dir():
            raise UserError(f"--resume_from_checkpoint: {where} is not a directory")
        if path.name.isdigit():  # a step folder: its manager is the parent
            checkpoints, step = Checkpoints(path.parent), int(path.name)
        else:
            checkpoints = Checkpoints(path)
    state, meta = checkpoints.restore(state, step)
    run.stream.load_state_dict(meta["sampler"])
    logger.info("resumed from step %d (epoch %d, %d batches consumed)", meta["step"], meta["sampler"]["epoch"],
                meta["sampler"]["batches_consumed"])
    return state, int(meta["step"]), int(meta["sampler"]["batches_consumed"])


def train_loop(run: Run, stop_after: int | None = None) -> tuple[dict, dict]:
    """Train to ``run.total_steps`` (or ``stop_after`` steps, to simulate an interruption); ``(state, stats)``."""
    import jax
    import numpy as np

    args, gas = run.args, run.args.gradient_accumulation_steps
    state = run.step.replicate({"params": run.embed.params, "opt_state": run.step.tx.init(run.embed.params),
                                "rng": jax.random.key_data(jax.random.key(args.seed))})
    state, step, consumed = _resume(run, state)
    base_key = jax.random.wrap_key_data(state["rng"])
    save_steps = int(args.save_steps or 0)
    micro, losses, examples, start = 0, [], 0, time.perf_counter()
    epoch = run.stream.sampler.epoch
    while step < run.total_steps and (stop_after is None or step < stop_after):
        for batch in run.stream.epoch(epoch):
            key = jax.random.fold_in(base_key, step * gas + micro)
            (params, opt_state), metrics = run.step((state["params"], state["opt_state"]), batch.arrays(),
                                                    run.options_for(batch), key)
            state = {"params": params, "opt_state": opt_state, "rng": state["rng"]}
            losses.append(metrics["loss"])
            examples += batch.query_ids.shape[0]
            micro, consumed = micro + 1, consumed + 1
            if micro < gas:
                continue
            micro, step = 0, step + 1
            if args.logging_steps and step % int(args.logging_steps) == 0:
                mean = float(np.mean([float(x) for x in losses]))
                logger.info("step %d/%d loss %.4f (%.2f examples/s)", step, run.total_steps, mean,
                            examples / (time.perf_counter() - start))
                losses = []
            last = step >= run.total_steps or (stop_after is not None and step >= stop_after)
            if (save_steps and step % save_steps == 0) or (last and args.save_final_checkpoint):
                run.checkpoints.save(step, state, {"step": step, "sampler": run.stream.state_dict(consumed)})
            if last:
                break
        else:
            epoch, consumed = epoch + 1, 0
    run.checkpoints.close()
    jax.block_until_ready(state)
    return state, {"steps": step, "train_examples_per_s": examples / max(time.perf_counter() - start, 1e-9)}


@cli_guard
def main(argv=None) -> dict:
    from ..noise import pop_verbose, quiet_third_party

    argv, verbose = pop_verbose(list(sys.argv[1:] if argv is None else argv))
    quiet_third_party(verbose)
    if argv[:1] == ["--encode"]:
        from .encode import main as encode_main

        return encode_main(argv[1:])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    model_args, data_args, args = parse_args(argv)
    from ..schema import write_json
    from .export import export_model, to_dense_encoder

    out = Path(args.output_dir)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise UserError(f"--output_dir: {out} is not empty (pass --overwrite_output_dir or --resume_from_checkpoint)")
    run = build(model_args, data_args, args)
    state, stats = train_loop(run)
    import jax

    if jax.process_index() != 0:  # one host writes the model folder and metrics
        return {}
    export_model(run.loaded, run.embed.graphdef, state["params"], out, run.instructions)
    metrics = {"train_" + k if not k.startswith("train_") else k: v for k, v in stats.items()}
    eval_file, eval_corpus = run.eval_inputs
    if eval_file is not None:
        from ..training.evaluation import RetrievalEvaluator

        evaluator = RetrievalEvaluator(eval_file, eval_corpus, data_args.metrics, data_args.cutoffs,
                                       task=eval_file.records[0].get("task", data_args.default_task),
                                       add_instruction=model_args.add_instruction, hits=data_args.hits,
                                       batch_size=args.per_device_eval_batch_size,
                                       corpus_subsample=data_args.eval_corpus_subsample,
                                       on_groups=data_args.eval_on_groups, seed=args.seed)
        encoder = to_dense_encoder(run.loaded, run.embed.graphdef, state["params"])
        metrics.update({f"eval_{k}": v for k, v in evaluator(encoder).items()})
        logger.info("final retrieval metrics (%s corpus): %s", evaluator.mode,
                    {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    write_json(out / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    main()
