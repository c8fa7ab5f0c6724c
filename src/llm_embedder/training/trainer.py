"""EmbedderTrainer: Hugging Face ``Trainer`` for dense retrievers with task-homogeneous batches.

What it changes in ``Trainer`` and why:
- the train dataloader uses :class:`~llm_embedder.data.sampler.TaskBatchSampler` (every global batch
  from one file, identical on all ranks, deterministic per epoch, so ``--resume_from_checkpoint``
  replays exactly the batches the interrupted run would have seen) and is not re-sharded by accelerate;
- ``compute_loss`` runs the :class:`EmbedderModel` and logs each task's loss terms;
- ``evaluate`` is real retrieval (corpus encoding + faiss + pytrec_eval), written to ``metrics.json``;
- saving writes a model directory that ``SentenceTransformer(dir)`` and ``AutoModel.from_pretrained(dir)``
  both load; checkpoints also keep the raw training state so resuming restores every weight exactly.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from ..distributed import all_reduce_sum, broadcast_json
from ..errors import UserError
from ..loss_settings import LOSS_SETTINGS
from ..modeling.grad_cache import replay_through
from ..modeling.losses import LossParams
from ..io import write_json
from .arguments import shuffle_seed
from .model import EmbedderModel, task_losses
from .train_log import TrainLogCallback

TRAINING_STATE = "llm_embedder_training_state.safetensors"
logger = logging.getLogger(__name__)


def grad_cache_chunk_sizes(args) -> tuple[int, int]:
    """(query, key) GradCache chunk sizes: the specific options, each falling back to --grad_cache_chunk_size."""
    common = getattr(args, "grad_cache_chunk_size", 0) or 0
    query = getattr(args, "grad_cache_query_chunk_size", 0) or common
    key = getattr(args, "grad_cache_key_chunk_size", 0) or common
    if bool(query) != bool(key):  # one side chunked, the other whole: a key chunk the size of the batch
        query, key = query or key, key or query
    return query, key


@contextlib.contextmanager
def consolidated_weights(model: torch.nn.Module, state_dict: dict | None):
    """Within the block, ``model``'s parameters hold the full tensors of ``state_dict`` (a ZeRO-3
    consolidated state dict, keyed like ``model.state_dict()``); their shards are put back afterwards."""
    if not state_dict:
        yield
        return
    swapped = []
    for name, param in model.named_parameters():
        if name in state_dict:
            swapped.append((param, param.data))
            param.data = state_dict[name].to(param.device)
    try:
        yield
    finally:
        for param, data in swapped:
            param.data = data


class _EpochAwareLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches the batch sampler (Trainer calls it every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def loss_params_from_args(args) -> LossParams:
    """The training arguments' loss settings as LossParams (for batches of a task the dataset does not know)."""
    return LossParams(**{name: getattr(args, name) for name in LOSS_SETTINGS},
                      negative_cross_device=args.negative_cross_device)


def check_loss_args_reach_recipes(args, recipes) -> None:
    """A loss setting given in the training arguments that a task's resolved recipe does not carry is an error.

    The loss of each task is decided once, when the dataset resolves its recipe (run_dense.py passes the
    explicit command-line values there). A Python caller who sets, say, ``contrastive_weight`` only in
    RetrievalTrainingArguments would otherwise train with the recipe's value without knowing it.
    """
    explicit = getattr(args, "explicit_args", None)
    for name, setting in LOSS_SETTINGS.items():
        value = getattr(args, name, setting.default)
        if (name not in explicit) if explicit is not None else value == setting.default:
            continue
        for recipe in recipes:
            if getattr(recipe, name) != value and recipe.source(name) not in ("cli", "task_config"):
                raise UserError(f"--{name} {value}: task '{recipe.name}' was resolved with {name} "
                                f"{getattr(recipe, name)} ({recipe.source(name)}); give it to the dataset too "
                                f"(TrainDataset(..., {name}={value!r})) or set it for the task in --task_config")


class EmbedderTrainer(Trainer):
    """Trainer for a :class:`DenseEncoder` (or an :class:`EmbedderModel` wrapping one).

    Each batch's loss is its task's :class:`~llm_embedder.modeling.losses.TaskLoss`, built once from the
    train dataset's resolved recipes (the one path of every loss setting, ``cos_temperature`` included).
    ``evaluator`` is a callable ``encoder -> {metric: value}`` (see :class:`RetrievalEvaluator`);
    ``sampler_mode``/``dataset_weights`` configure the task-homogeneous batch sampler;
    ``instructions`` ({task: (query_instruction, key_instruction)}) are stored with the saved model.
    """

    def __init__(self, model=None, args=None, *, evaluator=None, sampler_mode: str = "epoch",
                 dataset_weights=None, instructions=None, run_info=None, **kwargs):
        if model is not None and not isinstance(model, EmbedderModel):
            recipes = getattr(kwargs.get("train_dataset"), "recipes", None) or []
            check_loss_args_reach_recipes(args, recipes)
            query_chunk, key_chunk = grad_cache_chunk_sizes(args)
            model = EmbedderModel(model, loss_params_from_args(args), task_losses(recipes, args.negative_cross_device),
                                  grad_cache_chunk_size=query_chunk, grad_cache_key_chunk_size=key_chunk)
        super().__init__(model=model, args=args, **kwargs)
        self.add_callback(TrainLogCallback())  # train_log.jsonl: per-task losses at every logging step
        self.evaluator = evaluator
        self.sampler_mode = sampler_mode
        self.dataset_weights = dataset_weights
        self.instructions = instructions or {}
        self.run_info = run_info or {}
        self._task_loss_sums = defaultdict(lambda: defaultdict(float))
        self._task_steps = defaultdict(int)
        self._saving_checkpoint = False

    @property
    def encoder(self):
        return self.accelerator.unwrap_model(self.model).encoder

    # ---- data -------------------------------------------------------------------------------------
    def make_batch_sampler(self):
        from ..data.sampler import TaskBatchSampler

        sampler = TaskBatchSampler(
            self.train_dataset.file_sizes, per_device_batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size, rank=self.args.process_index, mode=self.sampler_mode,
            dataset_weights=self.dataset_weights, seed=shuffle_seed(self.args),
            drop_last=True,  # every batch full: one recipe, G keys per query, equal work per rank
        )
        for path, dropped, size in zip(self.train_dataset.paths, sampler.dropped, self.train_dataset.file_sizes):
            if dropped and self.args.process_index == 0:
                logger.warning("%s: %d of %d examples are left out of each epoch (the last partial global batch of "
                               "%d; a different %d each epoch)", path, dropped, size, sampler.global_batch_size, dropped)
        return sampler

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("EmbedderTrainer needs a train_dataset")
        # Not passed through accelerator.prepare: the batch sampler already gives each rank its slice of
        # a task-homogeneous global batch; accelerate's re-sharding would mix batches across ranks.
        return _EpochAwareLoader(
            self.train_dataset, batch_sampler=self.make_batch_sampler(), collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),  # pinning needs a GPU
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
        )

    # ---- loss -------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        """Hugging Face's step; with GradCache under DDP its last replayed chunks go through the wrapper
        (one gradient all-reduce per step, see ``modeling.grad_cache.replay_through``)."""
        inner = self.accelerator.unwrap_model(model)
        with replay_through(model, inner) if getattr(inner, "grad_cache_chunk_size", 0) else contextlib.nullcontext():
            return super().training_step(model, inputs, num_items_in_batch)

    def _prepare_input(self, data):
        """As Trainer's, except that under DeepSpeed fp16/bf16 float inputs (teacher scores) are not cast to
        half precision: the loss upcasts them, and quantising them first would lose what it keeps."""
        if isinstance(data, torch.Tensor) and torch.is_floating_point(data):
            return data.to(self.args.device)
        return super()._prepare_input(data)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        task = inputs.get("task", "qa")
        # unscaled_loss: the loss value itself (the backward "loss" is multiplied by the world size for
        # cross-device terms so that DDP's gradient averaging gives the single-process gradient)
        sums = self._task_loss_sums[task]
        sums["loss"] += float(outputs.get("unscaled_loss", outputs["loss"]).detach())
        for label, value in outputs.items():  # one entry per loss term of the task (contrastive, distill, ...)
            if label not in ("loss", "unscaled_loss") and torch.is_tensor(value) and value.dim() == 0:
                sums[label] += float(value.detach())
        self._task_steps[task] += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs, start_time=None):
        """Add each task's mean loss terms since the last log, averaged over processes.

        ``loss`` is replaced by the mean *unscaled* loss: the value Trainer tracks is the backward loss,
        which is world-size scaled for cross-device terms (see ``compute_loss`` in modeling.losses).
        """
        if "loss" in logs and self._task_steps:
            names = sorted((task, name) for task, sums in self._task_loss_sums.items() for name in sums)
            totals = torch.tensor([self._task_loss_sums[t][n] for t, n in names], dtype=torch.float64)
            steps = torch.tensor([float(self._task_steps[t]) for t, _ in names], dtype=torch.float64)
            # every rank ran the same tasks (global batches are task-homogeneous), so the keys agree; the
            # sums travel on the process group's device (NCCL rejects CPU tensors)
            totals, steps = all_reduce_sum(totals), all_reduce_sum(steps)
            for (task, name), total, count in zip(names, totals.tolist(), steps.tolist()):
                logs[f"{name}_{task}"] = round(total / count, 4)
            loss_rows = [i for i, (_, name) in enumerate(names) if name == "loss"]
            logs["loss"] = round(sum(totals[i].item() for i in loss_rows) / sum(steps[i].item() for i in loss_rows), 4)
            self._task_loss_sums.clear()
            self._task_steps.clear()
        super().log(logs, start_time) if start_time is not None else super().log(logs)

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.evaluator is None:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        start = time.time()
        metrics = {}
        # Under ZeRO-3 every forward gathers parameter shards from all ranks, so every rank runs the same
        # evaluation (same batches, same collectives); otherwise rank 0 evaluates alone, without collectives.
        if self.args.process_index == 0 or is_deepspeed_zero3_enabled():
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.evaluator(model.encoder).items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 2)
        metrics = broadcast_json(metrics)
        model.train(was_training)
        mode = getattr(self.evaluator, "mode", "full")
        self.log(metrics)
        self._record_metrics(metrics, mode)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _record_metrics(self, metrics: dict, mode: str) -> None:
        """Append this evaluation to ``<output_dir>/metrics.json`` with the run's args and versions."""
        if not self.is_world_process_zero():
            return
        path = Path(self.args.output_dir) / "metrics.json"
        history = json.loads(path.read_text())["history"] if path.exists() else []
        history.append({"step": self.state.global_step, "epoch": self.state.epoch, "eval_corpus": mode, **metrics})
        write_json(path, {"final": history[-1], "history": history, **self.run_info})

    # ---- saving and resuming ----------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        self._saving_checkpoint = True
        try:
            return super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False

    def _save(self, output_dir=None, state_dict=None):
        """Write the model directory (and, in checkpoints, the raw training state).

        Under DeepSpeed ZeRO-3 the parameters of ``self.model`` are shards; Trainer passes the consolidated
        ``state_dict`` (gathered on every rank by ``save_model``, with ``stage3_gather_16bit_weights_on_model_save``)
        and the full tensors are swapped in while the directory is written.
        """
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        with consolidated_weights(model, state_dict if is_deepspeed_zero3_enabled() else None):
            model.encoder.save_pretrained(output_dir, instructions=self.instructions)
            if self._saving_checkpoint:
                from safetensors.torch import save_model

                save_model(model, os.path.join(output_dir, TRAINING_STATE))
        write_json(Path(output_dir) / "training_args.json", self.args.to_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_model

        from ..errors import UserError

        state = Path(resume_from_checkpoint) / TRAINING_STATE
        if not state.is_file():
            raise UserError(f"--resume_from_checkpoint: {resume_from_checkpoint} has no {TRAINING_STATE} (not a checkpoint of this trainer)")
        load_model(self.accelerator.unwrap_model(model or self.model), str(state), strict=True)

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

