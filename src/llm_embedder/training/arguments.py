"""Argument dataclasses for ``run_dense.py``: model, data and training (a ``TrainingArguments`` subclass).

Names follow the reference LLM-Embedder ``run_dense.py`` and Hugging Face. Defaults are this project's:
fp32 master weights (``--bf16`` is opt-in), no instructions unless ``--add_instruction`` (and then the
LLM-Embedder ones from the task registry), MiniLM as the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..errors import UserError


@dataclass
class ModelArguments:
    """Which encoder to train and how it embeds text."""

    model_name_or_path: str = field(default="minilm", metadata={"help": "Local HF/sentence-transformers directory or alias (minilm)."})
    # None = keep what the model directory says (a saved llm-embedder / sentence-transformers model), else
    # the encoder defaults: mean pooling, normalised, 256/256 tokens, tied, no projection.
    pooling_method: Optional[str] = field(default=None, metadata={"help": "cls | mean | last (eos), left/right padding aware (default: the model's, else mean)."})
    normalize: Optional[bool] = field(default=None, metadata={"help": "L2-normalise embeddings (default: the model's, else True)."})
    query_max_length: Optional[int] = field(default=None, metadata={"help": "Max query tokens, instruction included (default: the model's, else 256)."})
    key_max_length: Optional[int] = field(default=None, metadata={"help": "Max key tokens, instruction included (default: the model's, else 256)."})
    tie_encoders: Optional[bool] = field(default=None, metadata={"help": "One encoder for queries and keys; False: a separate key encoder."})
    add_pooler: Optional[bool] = field(default=None, metadata={"help": "Add a trainable linear projection on top of pooling."})
    projection_out_dim: Optional[int] = field(default=None, metadata={"help": "Output size of the --add_pooler projection (default: hidden size)."})
    add_instruction: bool = field(default=False, metadata={"help": "Prepend each task's LLM-Embedder query/key instructions."})
    task_config: Optional[str] = field(default=None, metadata={"help": "JSON/YAML file overriding task recipes or registering new tasks."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: Optional[list[str]] = field(default=None, metadata={"help": "Module names LoRA adapts (default: peft's choice for the architecture, query/value for BERT)."})


@dataclass
class DataArguments:
    """Training files, evaluation files and how examples are built from them."""

    train_data: Optional[list[str]] = field(default=None, metadata={"help": "Schema files or directories (repeat a file to upsample it); `llm-embedder:` prefix allowed."})
    eval_data: Optional[str] = field(default=None, metadata={"help": "Schema file with positives (pos_index or pos) for retrieval evaluation."})
    corpus: Optional[str] = field(default=None, metadata={"help": "Corpus JSONL (row number = key index) for files whose .meta.json sidecar names none."})
    key_template: Optional[str] = field(default=None, metadata={"help": "Key text from a corpus row, e.g. '{title} {text}' (default: title + text)."})
    default_task: str = field(default="qa", metadata={"help": "Task of records without a `task` field."})
    train_group_size: int = field(default=8, metadata={"help": "Keys per query: 1 positive + (G-1) negatives."})
    select_positive: str = field(default="first", metadata={"help": "first | random | teacher (highest teacher score)."})
    select_negative: str = field(default="random", metadata={"help": "random | top (highest teacher score / first listed)."})
    teacher_scores_margin: Optional[float] = field(default=None, metadata={"help": "Drop rows whose best minus worst teacher score is below this (as the reference)."})
    teacher_scores_min: Optional[float] = field(default=None, metadata={"help": "Drop rows whose best teacher score is below this."})
    inbatch_same_dataset: str = field(default="epoch", metadata={"help": "Task-homogeneous batches: epoch (every example once) | random (files by size or --dataset_weights)."})
    dataset_weights: Optional[list[float]] = field(default=None, metadata={"help": "Sampling weight per --train_data file in random mode."})
    max_sample_num: Optional[int] = field(default=None, metadata={"help": "Use at most N records of each training file (a recipe may set its own)."})
    metrics: list[str] = field(default_factory=lambda: ["mrr", "recall", "ndcg"], metadata={"help": "mrr recall ndcg map (nq needs answers)."})
    cutoffs: list[int] = field(default_factory=lambda: [1, 10, 100], metadata={"help": "Metric cutoffs."})
    hits: int = field(default=100, metadata={"help": "Keys retrieved per query during evaluation."})
    max_eval_queries: Optional[int] = field(default=None, metadata={"help": "Evaluate on the first N queries of --eval_data."})
    eval_corpus_subsample: Optional[int] = field(default=None, metadata={"help": "Cheaper eval: all positives + N seeded other corpus rows."})
    eval_on_groups: bool = field(default=False, metadata={"help": "Cheaper eval: rank each query's own pos+neg group (Trove-style)."})


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the loss options of LLM-Embedder (DESIGN.md §3)."""

    output_dir: Optional[str] = field(default=None, metadata={"help": "Where checkpoints, the final model and metrics.json go."})
    contrastive_weight: float = field(default=1.0, metadata={"help": "α in α·contrastive + β·distill."})
    distill_weight: float = field(default=1.0, metadata={"help": "β in α·contrastive + β·distill (used where teacher_scores exist)."})
    stable_distill: bool = field(default=False, metadata={"help": "Rank-aware stable distillation instead of KL."})
    stable_distill_positive_first: bool = field(default=True, metadata={"help": "Stable distillation: the labelled positive ranks first regardless of its teacher score."})
    distill_loss: str = field(default="kl", metadata={"help": "Distillation when not stable: kl | margin_mse."})
    cos_temperature: float = field(default=0.01, metadata={"help": "τ in s(q,k) = <q,k>/τ (a loss setting: per task in --task_config)."})
    teacher_temperature: float = field(default=1.0, metadata={"help": "T_t: softmax(teacher / T_t)."})
    student_temperature: float = field(default=1.0, metadata={"help": "T_s: softmax(s(q,k) / T_s) in KL distillation."})
    inbatch_negatives: bool = field(default=True, metadata={"help": "Other queries' keys are negatives (contrastive and stable distillation)."})
    negative_cross_device: bool = field(default=False, metadata={"help": "Gather keys from all processes as negatives."})
    grad_cache_chunk_size: int = field(default=0, metadata={"help": "GradCache: embed in chunks of N rows so a large batch fits in memory (same gradients; one process only). 0 = off."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: batches are built by our collator."})
    report_to: Optional[list[str]] = field(default_factory=lambda: ["none"], metadata={"help": "Integrations to report to."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "no | steps | epoch (checkpoints for --resume_from_checkpoint)."})
    eval_strategy: str = field(default="no", metadata={"help": "no | steps | epoch; the final evaluation runs whenever --eval_data is set."})

    def __post_init__(self):
        if self.output_dir is None:
            raise UserError("--output_dir: required (where the trained model and metrics.json go)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _cuda_available():
            # under torchrun without GPUs, accelerate wraps the model in DDP (gloo) only when told it runs on
            # CPU; otherwise every process would update its own copy with its own half of each batch
            self.use_cpu = True
        super().__post_init__()
        if self.grad_cache_chunk_size < 0:
            raise UserError(f"--grad_cache_chunk_size: must be 0 (off) or a positive row count, got {self.grad_cache_chunk_size}")
        if self.grad_cache_chunk_size and self.world_size > 1:
            raise UserError("--grad_cache_chunk_size: GradCache runs in one process only (DDP would sync every chunk); "
                            "use --negative_cross_device for large batches over several processes")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
