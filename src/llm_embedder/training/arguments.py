"""Argument dataclasses for ``run_dense.py``: model, data and training (a ``TrainingArguments`` subclass).

Names follow the reference LLM-Embedder ``run_dense.py`` and Hugging Face; Tevatron's, Trove's and
FlagEmbedding's names for the same settings are aliases (declared with :func:`~llm_embedder.argparsing.arg`,
listed in ``--help`` and in docs/migration.md). Defaults are the reference's where the argument carries its
name; the exceptions and their reasons are in :mod:`llm_embedder.migration`, which writes the table of
docs/migration.md from these fields.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from transformers import TrainingArguments

from ..argparsing import arg
from ..errors import UserError
from ..resources import DATA_ROOT_ENV

TEVATRON_GC_CHUNKS = (4, 32)  # Tevatron's gc_q_chunk_size / gc_p_chunk_size defaults, used by a bare --grad_cache
TEVATRON_LORA_RANK = 8  # Tevatron v2's lora_r default, used by a bare --lora


@dataclass
class ModelArguments:
    """Which encoder to train and how it embeds text."""

    model_name_or_path: str = arg("minilm", "Local HF/sentence-transformers directory, alias (minilm) or Hugging Face model id.",
                                  reference=["--query_encoder"])
    # None = keep what the model directory says (a saved llm-embedder / sentence-transformers model), else
    # the encoder defaults: mean pooling, normalised, 256/256 tokens, tied, no projection.
    pooling_method: Optional[str] = arg(None, "cls | mean | last (eos), left/right padding aware (default: the model's, else mean).",
                                        tevatron=["--pooling"], trove=["--pooling"], flagembedding=["--sentence_pooling_method"])
    normalize: Optional[bool] = arg(None, "L2-normalise embeddings (default: the model's, else True).",
                                    tevatron=["--normalize"], trove=["--normalize"], flagembedding=["--normalize_embeddings"])
    query_max_length: Optional[int] = arg(None, "Max query tokens, instruction included (default: the model's, else 256).",
                                          tevatron=["--q_max_len", "--query_max_len"], trove=["--query_max_len"])
    key_max_length: Optional[int] = arg(None, "Max key tokens, instruction included (default: the model's, else 256).",
                                        tevatron=["--p_max_len", "--passage_max_len"], trove=["--passage_max_len"])
    tie_encoders: Optional[bool] = arg(None, "One encoder for queries and keys; False: a separate key encoder "
                                       "(Tevatron's bare --untie_encoder sets False).")
    add_pooler: Optional[bool] = arg(None, "Add a trainable linear projection on top of pooling.")
    projection_out_dim: Optional[int] = arg(None, "Output size of the --add_pooler projection (default: hidden size).")
    add_instruction: bool = arg(True, "Prepend each task's LLM-Embedder query/key instructions (as the reference; --add_instruction false trains without).")
    query_prefix: Optional[str] = arg(None, "Text put before every query (replaces the task instructions for queries; implies instructions on).")
    passage_prefix: Optional[str] = arg(None, "Text put before every key (replaces the task instructions for keys; implies instructions on).")
    task_config: Optional[str] = arg(None, "JSON/YAML file overriding task recipes or registering new tasks.")
    lora: bool = arg(False, f"Train LoRA adapters instead of all weights (rank --lora_rank, {TEVATRON_LORA_RANK} when not given).")
    lora_rank: int = arg(0, "LoRA rank; 0 trains all weights (unless --lora).", tevatron=["--lora_r"])
    lora_alpha: float = arg(16.0, "LoRA alpha.")
    lora_dropout: float = arg(0.0, "LoRA dropout.")
    lora_target_modules: Optional[list[str]] = arg(None, "Module names LoRA adapts, space or comma separated "
                                                   "(default: peft's choice for the architecture, query/value for BERT).")
    lora_adapter: Optional[str] = arg(None, "Resume LoRA training from a saved lora_adapter/ folder, on the base model "
                                            "--model_name_or_path (the adapter's own rank, alpha and targets are used).")
    load_in_4bit: bool = arg(False, "QLoRA: load the frozen base weights in 4 bit (NF4, bitsandbytes; needs a CUDA GPU and --lora).")
    load_in_8bit: bool = arg(False, "QLoRA: load the frozen base weights in 8 bit (bitsandbytes; needs a CUDA GPU and --lora).")
    append_eos: Optional[bool] = arg(None, "End every query and key with the tokenizer's EOS token (for last-token pooling on "
                                     "decoders; default: the saved model's setting, else off).", tevatron=["--append_eos_token"], trove=["--append_eos"])
    config_overrides: Optional[str] = arg(None, "Change fields of the model's config before loading, as in Hugging Face's run_mlm.py: "
                                         "'attention_probs_dropout_prob=0' (about 2x faster BERT training on CPU: "
                                         "attention dropout forces the slow attention kernel; docs/training.md).")
    tokenizer_name: Optional[str] = arg(None, "Tokenizer folder or name; must be the model's own (the tokenizer is saved with the model).")
    cache_dir: Optional[str] = arg(None, "Hugging Face cache folder for models given by hub id (default: $HF_HUB_CACHE).")

    def __post_init__(self):
        if self.lora and self.lora_rank == 0:
            self.lora_rank = TEVATRON_LORA_RANK
        if self.lora_rank < 0:
            raise UserError(f"--lora_rank: must be 0 (off) or positive, got {self.lora_rank}")
        from ..modeling.quantization import quantization_config

        quantization_config(self.load_in_4bit, self.load_in_8bit, self.lora_rank or bool(self.lora_adapter))  # refuses in one line, before any work
        if self.tokenizer_name is not None and self.tokenizer_name != self.model_name_or_path:
            raise UserError(f"--tokenizer_name: {self.tokenizer_name!r} differs from --model_name_or_path "
                            f"{self.model_name_or_path!r}; the encoder uses (and saves) its model's own tokenizer")


@dataclass
class DataArguments:
    """Training files, evaluation files and how examples are built from them."""

    train_data: Optional[list[str]] = arg(None, "Schema files or directories (repeat a file to upsample it); `llm-embedder:` prefix allowed.",
                                          tevatron=["--train_dir", "--dataset_path"])
    dataset_name: Optional[str] = arg(None, "Tevatron's dataset: 'json' (files given by --dataset_path/--train_data) or a local "
                                      "schema file/folder (added to --train_data); hub datasets: convert them first.")
    dataset_split: str = arg("train", "Tevatron's split of --dataset_name; training reads the train split only.")
    eval_data: Optional[str] = arg(None, "Schema file with positives (pos_index or pos) for retrieval evaluation.")
    corpus: Optional[str] = arg(None, "Corpus JSONL (row number = key index) for files whose .meta.json sidecar names none.")
    key_template: Optional[str] = arg(None, "Key text from a corpus row, e.g. '{title} {text}' (default: title + text).")
    default_task: str = arg("qa", "Task of records without a `task` field.")
    train_group_size: int = arg(8, "Keys per query: 1 positive + (G-1) negatives.", tevatron=["--train_n_passages"], trove=["--group_size"])
    select_positive: str = arg("first", "first | random | teacher (highest teacher score).")
    select_negative: str = arg("random", "random | top (highest teacher score / first listed).")
    teacher_scores_margin: Optional[float] = arg(None, "Drop rows whose best minus worst teacher score is below this (as the reference).")
    teacher_scores_min: Optional[float] = arg(None, "Drop rows whose best teacher score is below this.")
    inbatch_same_dataset: str = arg("epoch", "Task-homogeneous batches: epoch (every example once) | random (files by size or --dataset_weights).")
    dataset_weights: Optional[list[float]] = arg(None, "Sampling weight per --train_data file in random mode.")
    max_sample_num: Optional[int] = arg(None, "Use at most N records of each training file (a recipe may set its own).")
    metrics: list[str] = arg(help="mrr recall ndcg map (nq needs answers).", default_factory=lambda: ["mrr", "recall", "ndcg"])
    cutoffs: list[int] = arg(help="Metric cutoffs, space or comma separated.", default_factory=lambda: [1, 5, 10, 100])
    hits: int = arg(200, "Keys retrieved per query during evaluation.")
    max_eval_queries: Optional[int] = arg(None, "Evaluate on the first N queries of --eval_data.")
    eval_corpus_subsample: Optional[int] = arg(None, "Cheaper eval: all positives + N seeded other corpus rows.")
    eval_on_groups: bool = arg(False, "Cheaper eval: rank each query's own pos+neg group (Trove-style).")
    encode_backend: str = arg("torch", "How evaluation encodes: torch | onednn (torch with oneDNN-fused Linear layers, "
                                       "CPU, ~1.4x) | onnxruntime; the same vectors within 1e-5 (docs/encoder.md).")
    data_root: Optional[str] = arg(None, "Folder that `llm-embedder:` paths resolve against (default: $LLM_EMBEDDER_DATA, else the repo's data/).")
    use_train_config: bool = arg(True, "Per-task recipes (tasks.py) set each task's loss settings, as the reference's "
                                 "--use_train_config; they always apply here (change them with --task_config).")
    version: str = arg("llm-embedder", "Instruction set of the task registry: llm-embedder (the only one built in; "
                       "others through --task_config).")

    def __post_init__(self):
        from ..modeling.backends import check_backend

        check_backend(self.encode_backend)
        if self.data_root is not None:
            if not os.path.isdir(self.data_root):
                raise UserError(f"--data_root: {self.data_root} is not a folder")
            os.environ[DATA_ROOT_ENV] = os.path.abspath(self.data_root)  # read by every llm-embedder: path lookup
        if not self.use_train_config:
            raise UserError("--use_train_config false: per-task recipes always apply here; override a task's settings "
                            "with --task_config instead")
        if self.version != "llm-embedder":
            raise UserError(f"--version: only the llm-embedder instructions are built in, got {self.version!r}; "
                            "register other instructions with --task_config")
        if self.dataset_name not in (None, "json"):
            if not os.path.exists(self.dataset_name):
                raise UserError(f"--dataset_name: {self.dataset_name!r} is not a local file or folder; hub datasets are "
                                "not read directly: download it and run `llm-embedder convert tevatron` (or give --dataset_path)")
            self.train_data = [*(self.train_data or []), self.dataset_name]
        if self.dataset_split != "train":
            raise UserError(f"--dataset_split: training reads the train split only, got {self.dataset_split!r}; "
                            "give the file of that split with --train_data")


def shuffle_seed(args) -> int:
    """The seed of the training data's order: HF's ``--data_seed`` when given, else ``--seed`` (torch and JAX
    trainers alike; 3iter.sh gives each round its own data seed)."""
    return args.data_seed if args.data_seed is not None else args.seed


@dataclass
class RetrievalTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the loss options of LLM-Embedder (DESIGN.md §3)."""

    output_dir: Optional[str] = arg(None, "Where checkpoints, the final model and metrics.json go.")
    contrastive_weight: float = arg(1.0, "α in α·contrastive + β·distill, applied as given (the reference: 0.2, ignored when contrastive is the only loss).")
    distill_weight: float = arg(1.0, "β in α·contrastive + β·distill (used where teacher_scores exist).")
    stable_distill: bool = arg(False, "Rank-aware stable distillation instead of KL.")
    stable_distill_positive_first: bool = arg(True, "Stable distillation: the labelled positive ranks first regardless of its teacher score.")
    distill_loss: str = arg("kl", "Distillation when not stable: kl | margin_mse.")
    cos_temperature: float = arg(0.01, "τ in s(q,k) = <q,k>/τ, a loss setting (per task in --task_config); "
                                       "Tevatron's and FlagEmbedding's --temperature is the same τ.",
                                 tevatron=["--temperature"], trove=["--temperature"])
    teacher_temperature: float = arg(1.0, "T_t: softmax(teacher / T_t).")
    student_temperature: float = arg(1.0, "T_s: softmax(s(q,k) / T_s) in KL distillation.")
    inbatch_negatives: bool = arg(True, "Other queries' keys are negatives (contrastive and stable distillation).")
    negative_cross_device: bool = arg(True, "Gather keys from all processes as negatives (no effect in one process).",
                                      tevatron=["--negatives_x_device"], flagembedding=["--negatives_cross_device"])
    grad_cache: bool = arg(False, "GradCache on; chunk sizes from --grad_cache_*chunk_size, else Tevatron's "
                                   f"{TEVATRON_GC_CHUNKS[0]} (queries) / {TEVATRON_GC_CHUNKS[1]} (keys).")
    grad_cache_chunk_size: int = arg(0, "GradCache: embed in chunks of N rows so a large batch fits in memory (same gradients; "
                                        "works with DDP, DeepSpeed ZeRO-1/2 and --negative_cross_device). 0 = off.")
    grad_cache_query_chunk_size: int = arg(0, "GradCache chunk size for queries; 0 = --grad_cache_chunk_size.",
                                           tevatron=["--gc_q_chunk_size"])
    grad_cache_key_chunk_size: int = arg(0, "GradCache chunk size for keys; 0 = --grad_cache_chunk_size.",
                                         tevatron=["--gc_p_chunk_size"])
    split_batch_by_length: bool = arg(True, "Embed each batch in groups of similar length, each padded only to its own longest "
                                            "text: the same embeddings, fewer pad positions computed (false: one padded batch).")
    fast_attention_dropout: bool = arg(True, "Training on CPU: compute attention dropout with our kernel-friendly version "
                                             "(same distribution, other random draws, ~3x faster attention) instead of "
                                             "torch's reference fallback; false: torch's own.")
    remove_unused_columns: bool = arg(False, "Kept False: batches are built by our collator.")
    report_to: Optional[list[str]] = arg(help="Integrations to report to.", default_factory=lambda: ["none"])
    logging_steps: float = arg(100, "Log every N steps.")
    learning_rate: float = arg(5e-6, "AdamW learning rate.")
    warmup_ratio: float = arg(0.1, "Fraction of the steps with linear warm-up.")
    weight_decay: float = arg(0.01, "AdamW weight decay.")
    per_device_train_batch_size: int = arg(16, "Queries per device per step (each with --train_group_size keys).")
    save_steps: float = arg(2000, "Save (and, with --eval_data, evaluate) every N steps; giving it turns on --save_strategy steps.")
    save_strategy: str = arg("no", "no | steps | epoch (checkpoints for --resume_from_checkpoint); --save_steps alone means steps.")
    eval_strategy: str = arg("no", "no | steps | epoch; follows --save_strategy when --eval_data is given; the final evaluation runs whenever --eval_data is set.",
                             reference=["--evaluation_strategy"])

    def __post_init__(self):
        if self.output_dir is None:
            raise UserError("--output_dir: required (where the trained model and metrics.json go)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu and not _cuda_available():
            # under torchrun without GPUs, accelerate wraps the model in DDP (gloo) only when told it runs on
            # CPU; otherwise every process would update its own copy with its own half of each batch
            self.use_cpu = True
        if self.grad_cache and not (self.grad_cache_chunk_size or self.grad_cache_query_chunk_size
                                    or self.grad_cache_key_chunk_size):
            self.grad_cache_query_chunk_size, self.grad_cache_key_chunk_size = TEVATRON_GC_CHUNKS
        # argument checks before TrainingArguments' own set-up, which configures accelerate / DeepSpeed
        # process-wide (environment variables, a global DeepSpeed config) that a refused run must not leave behind
        for name in ("grad_cache_chunk_size", "grad_cache_query_chunk_size", "grad_cache_key_chunk_size"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name}: must be 0 (off / use --grad_cache_chunk_size) or a positive row count, "
                                f"got {getattr(self, name)}")
        grad_cache = self.grad_cache_chunk_size or self.grad_cache_query_chunk_size or self.grad_cache_key_chunk_size
        if grad_cache and self.deepspeed and _zero_stage(self.deepspeed) == 3:
            raise UserError("--grad_cache_chunk_size: GradCache runs with DDP and DeepSpeed ZeRO-1/2, not ZeRO-3 "
                            "(its parameter shards are gathered per forward); use a stage 1/2 config")
        super().__post_init__()


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a ``--deepspeed`` config (a JSON file or a dict), read without initialising DeepSpeed."""
    import json

    config = deepspeed
    if not isinstance(config, dict):
        try:
            config = json.loads(open(config, encoding="utf-8").read())
        except (OSError, ValueError) as err:
            raise UserError(f"--deepspeed: cannot read {deepspeed}: {err}") from None
    stage = config.get("zero_optimization", {}).get("stage")
    return int(stage) if isinstance(stage, (int, str)) and str(stage).isdigit() else None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
