"""DenseEncoder: a Hugging Face encoder turned into a text embedder for queries and keys (the model only).

One module does the whole "text -> vector" path so training, evaluation and mining all embed the same way:
instruction prepended to the text, truncation to the side's max length, transformer, pooling
(:mod:`.pooling`), optional linear projection (``--add_pooler``), optional L2 normalisation.

- ``tokenize`` + ``embed`` are the training path (gradients flow); ``forward`` wraps both for DDP.
- ``encode`` is the inference path: eval mode, ``torch.inference_mode``, texts sorted by length so each
  batch pads little, float32 numpy in input order, tqdm progress.
- ``tie_encoders=False`` keeps a separate key encoder (and projection), a deep copy at initialisation.
- ``lora_rank > 0`` wraps the transformer(s) with peft LoRA: only adapters (and a new projection) train.
- ``save_pretrained`` writes a directory that ``transformers.AutoModel``, ``SentenceTransformer`` and
  :meth:`DenseEncoder.from_pretrained` all load (safetensors only; LoRA merged, adapter kept beside it).

Settings and their one set of defaults: :mod:`.encoder_settings`; the directory format:
:mod:`.st_format`; the atomic directory swap: :mod:`.publish`.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..distributed import local_device
from ..errors import UserError
from ..io import write_json
from ..resources import resolve_encoder
from .encoder_settings import (DEFAULTS, EncoderSettings, check_instructions, check_lora, check_settings,  # noqa: F401
                               resolve_settings)
from .attention_dropout import attention_dropout_for
from .length_groups import length_groups
from .loading import _add_lora, _resume_lora, _torch_dtype, apply_config_overrides
from .pooling import get_pooling, pool
from .publish import write_directory
from .st_format import (KEY_ENCODER_DIR, SETTINGS_FILE, is_peft, load_projection,  # noqa: F401
                        read_sentence_transformers_layout, sentence_transformers_prompts, settings_record, write_tower)

logger = logging.getLogger(__name__)

SIDES = ("query", "key")
_DEFAULT = EncoderSettings()


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'query' or 'key', got {side!r}")
    return side


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
    return list(texts)


class DenseEncoder(nn.Module):
    """Embeds queries and keys with one (tied) or two (untied) HF encoders; see the module docstring."""

    def __init__(self, model: nn.Module, tokenizer, *, pooling_method: str = "mean", normalize: bool = True,
                 query_max_length: int = 256, key_max_length: int = 256, key_model: nn.Module | None = None,
                 projection: nn.Linear | None = None, key_projection: nn.Linear | None = None,
                 instructions: Mapping | None = None, lora: dict | None = None, append_eos: bool = False):
        super().__init__()
        get_pooling(pooling_method)
        if key_model is None and key_projection is not None:
            raise ValueError("key_projection needs a key_model (tied encoders share the projection)")
        if key_model is not None and (projection is None) != (key_projection is None):
            raise ValueError("untied encoders need a projection on both sides or on neither")
        self.model = model
        self.key_model = key_model
        self.projection = projection
        self.key_projection = key_projection
        self.tokenizer = tokenizer
        self.pooling_method = pooling_method
        self.normalize = normalize
        self.max_lengths = {"query": query_max_length, "key": key_max_length}
        self.instructions = check_instructions(instructions or {})
        self.lora = lora  # {"rank", "alpha", "dropout", "target_modules"} when adapters are attached
        self.append_eos = bool(append_eos)  # end every text with the EOS token (last-token pooling on decoders)
        self.split_by_length = True  # embed(): run a padded batch in groups of similar length (same vectors)
        self.fast_attention_dropout = True  # embed() in training on CPU: .attention_dropout instead of torch's fallback

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, pooling_method: str | None = None,
                        normalize: bool | None = None, query_max_length: int | None = None,
                        key_max_length: int | None = None, tie_encoders: bool | None = None,
                        add_pooler: bool | None = None, projection_out_dim: int | None = None,
                        lora_rank: int = _DEFAULT.lora_rank, lora_alpha: float = _DEFAULT.lora_alpha,
                        lora_dropout: float = _DEFAULT.lora_dropout,
                        lora_target_modules: list[str] | str | None = None, torch_dtype=None,
                        append_eos: bool | None = None, quantization_config=None,
                        lora_adapter: str | os.PathLike | None = None,
                        config_overrides: str | None = None) -> "DenseEncoder":
        """Load an encoder from an alias (``minilm``) or a local HF / sentence-transformers / saved directory.

        A setting left ``None`` takes the value saved in the directory's ``llm_embedder.json``, else what its
        sentence-transformers modules say (pooling, normalisation), else :data:`DEFAULTS`. A value passed
        explicitly wins (with a warning when it differs from the saved one). LoRA is never restored from a
        directory: saved weights are merged; pass ``lora_rank`` to train new adapters on top.
        ``quantization_config`` (see :mod:`.quantization`) loads the base weights through bitsandbytes on
        this rank's GPU (QLoRA; needs ``lora_rank``). ``lora_adapter`` (a saved ``lora_adapter/`` folder)
        resumes those adapters, trainable, on the *base* model ``name_or_path`` (its own rank etc. win).
        ``config_overrides`` (``"attention_probs_dropout_prob=0,hidden_dropout_prob=0.1"``, Hugging Face's
        ``run_mlm.py`` syntax) changes existing fields of the model's config before the weights load.
        """
        explicit = {"pooling_method": pooling_method, "normalize": normalize, "query_max_length": query_max_length,
                    "key_max_length": key_max_length, "tie_encoders": tie_encoders, "add_pooler": add_pooler,
                    "projection_out_dim": projection_out_dim}
        check_settings({k: DEFAULTS[k] if v is None else v for k, v in explicit.items()}, "--")
        check_lora(lora_rank, lora_alpha, lora_dropout)
        if quantization_config is not None and not (lora_rank or lora_adapter):
            raise UserError("--load_in_4bit / --load_in_8bit: quantised base weights cannot be trained; add --lora")
        if add_pooler is False and projection_out_dim is not None:
            raise UserError("--projection_out_dim: needs --add_pooler (or leave --add_pooler unset)")
        dtype = _torch_dtype(torch_dtype)

        path = resolve_encoder(name_or_path)
        settings, saved, layout = resolve_settings(path, explicit)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        apply_config_overrides(config, config_overrides)  # refuses an unknown field before the weights load
        max_positions = getattr(config, "max_position_embeddings", None)
        for side in SIDES:
            if isinstance(max_positions, int) and max_positions > 0 and settings[f"{side}_max_length"] > max_positions:
                raise UserError(f"--{side}_max_length: {settings[f'{side}_max_length']} exceeds the model's "
                                f"{max_positions} positions ({path})")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(f"{path}: the tokenizer has neither a pad token nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token

        def load_tower(folder: Path, folder_layout: dict):
            quantized = {} if quantization_config is None else {
                "quantization_config": quantization_config, "device_map": {"": str(local_device())}}
            folder_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
            apply_config_overrides(folder_config, config_overrides)
            model = AutoModel.from_pretrained(folder, config=folder_config, local_files_only=True,
                                              trust_remote_code=False, dtype=dtype, **quantized)
            if quantization_config is not None:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            projection = None
            if settings["add_pooler"]:
                hidden = cls._hidden_size_of(model.config)
                out_dim = settings["projection_out_dim"] or hidden
                dense_dir = folder_layout.get("dense_dir") if saved.get("add_pooler") else None
                if dense_dir is not None:
                    projection = load_projection(dense_dir)
                    if (projection.in_features, projection.out_features) != (hidden, out_dim):
                        logger.warning("%s: saved projection is %dx%d; starting a new %dx%d one", dense_dir,
                                       projection.in_features, projection.out_features, hidden, out_dim)
                        projection = None
                if projection is None:
                    projection = nn.Linear(hidden, out_dim)
                projection.to(next(model.parameters()).dtype)
            return model, projection

        model, projection = load_tower(path, layout)
        key_model = key_projection = None
        if not settings["tie_encoders"]:
            if saved.get("tie_encoders") is False:
                key_dir = path / KEY_ENCODER_DIR
                if not key_dir.is_dir():
                    raise UserError(f"{path / SETTINGS_FILE}: says tie_encoders false but {key_dir} is missing")
                key_model, key_projection = load_tower(key_dir, read_sentence_transformers_layout(key_dir))
            else:
                key_model, key_projection = copy.deepcopy(model), copy.deepcopy(projection)

        lora = None
        if lora_adapter is not None:
            model, lora = _resume_lora(model, key_model, Path(lora_adapter), saved)
        elif lora_rank:
            lora = {"rank": lora_rank, "alpha": float(lora_alpha), "dropout": float(lora_dropout),
                    "target_modules": lora_target_modules}
            model = _add_lora(model, lora_rank, lora_alpha, lora_dropout, lora_target_modules)
            if key_model is not None:
                key_model = _add_lora(key_model, lora_rank, lora_alpha, lora_dropout, lora_target_modules)
            targets = model.peft_config["default"].target_modules  # peft's per-architecture default when None
            lora["target_modules"] = targets if isinstance(targets, str) else sorted(targets)  # str = a regex

        return cls(model, tokenizer, pooling_method=settings["pooling_method"], normalize=settings["normalize"],
                   query_max_length=settings["query_max_length"], key_max_length=settings["key_max_length"],
                   key_model=key_model, projection=projection, key_projection=key_projection,
                   instructions=saved.get("instructions") or {}, lora=lora,
                   append_eos=saved.get("append_eos", False) if append_eos is None else append_eos)

    @staticmethod
    def _hidden_size_of(config) -> int:
        for name in ("hidden_size", "d_model", "dim"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        raise UserError(f"cannot find the hidden size of model type '{config.model_type}'")

    # ------------------------------------------------------------------ properties
    @property
    def tie_encoders(self) -> bool:
        return self.key_model is None

    @property
    def config(self):
        """The (query) transformer's Hugging Face config."""
        return self.model.config

    @property
    def hidden_size(self) -> int:
        """Width of the transformer's token states (before any projection)."""
        return self._hidden_size_of(self.model.config)

    @property
    def embedding_dim(self) -> int:
        """Width of the vectors ``embed`` / ``encode`` return."""
        return self.projection.out_features if self.projection is not None else self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def similarity_fn_name(self) -> str:
        """``cosine`` when embeddings are normalised, else ``dot`` (what the training score uses)."""
        return "cosine" if self.normalize else "dot"

    def settings(self) -> dict:
        """The settings ``llm_embedder.json`` records (and ``from_pretrained`` restores)."""
        return {"pooling_method": self.pooling_method, "normalize": self.normalize,
                "query_max_length": self.max_lengths["query"], "key_max_length": self.max_lengths["key"],
                "tie_encoders": self.tie_encoders, "add_pooler": self.projection is not None,
                "projection_out_dim": self.projection.out_features if self.projection is not None else None,
                **({"append_eos": True} if self.append_eos else {})}  # written only when on: older files stay valid

    def _tower(self, side: str) -> tuple[nn.Module, nn.Linear | None]:
        if _check_side(side) == "key" and self.key_model is not None:
            return self.key_model, self.key_projection
        return self.model, self.projection

    def _transformers(self) -> list[nn.Module]:
        return [self.model] if self.key_model is None else [self.model, self.key_model]

    # ------------------------------------------------------------------ training path
    def tokenize(self, texts: Sequence[str], side: str = "query", instruction: str = ""):
        """Padded ``pt`` tensors for ``instruction + text``, truncated to the side's max length."""
        texts = _check_texts(texts)
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        if not self.append_eos:
            return self.tokenizer([instruction + text for text in texts], padding=True, truncation=True,
                                  max_length=self.max_lengths[_check_side(side)], return_tensors="pt")
        return self.tokenizer.pad(self._token_ids(texts, side, instruction), padding=True, return_tensors="pt")

    def _token_ids(self, texts: list[str], side: str, instruction: str) -> dict:
        """Unpadded token ids of ``instruction + text``; with ``append_eos`` cut to max_length - 1 and ended by EOS
        (Tevatron's ``append_eos_token``), so last-token pooling reads the EOS state of every text."""
        max_length = self.max_lengths[_check_side(side)]
        if not self.append_eos:
            return self.tokenizer([instruction + text for text in texts], truncation=True, max_length=max_length,
                                  padding=False)
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise UserError("--append_eos_token: the tokenizer has no EOS token")
        ids = self.tokenizer([instruction + text for text in texts], truncation=True, max_length=max_length - 1,
                             padding=False)["input_ids"]
        return {"input_ids": [row + [eos] for row in ids]}

    def embed(self, batch: Mapping[str, torch.Tensor], side: str = "query") -> torch.Tensor:
        """``[N, D]`` embeddings of a tokenised batch, with gradient; projected / normalised as configured.

        With ``split_by_length`` (the default) a right-padded batch runs in groups of similar length, each
        cut to its own longest row (:mod:`.length_groups`): the same vectors, fewer pad positions computed.
        With ``fast_attention_dropout`` (the default), training on CPU without gradient checkpointing (whose
        backward recomputation runs outside this switch) computes attention dropout with :mod:`.attention_dropout`.
        """
        with attention_dropout_for(self.model, self.fast_attention_dropout):
            return self._embed_groups(batch, side)

    def _embed_groups(self, batch: Mapping[str, torch.Tensor], side: str) -> torch.Tensor:
        """``embed`` without the attention switch: length groups, else one padded batch."""
        mask = batch["attention_mask"]
        if self.split_by_length and mask.dim() == 2 and mask.shape[0] > 1 and self.tokenizer.padding_side == "right":
            lengths = mask.sum(dim=1).tolist()
            groups = length_groups(lengths)
            if len(groups) > 1 or max(lengths) < mask.shape[1]:
                parts = []
                for rows in groups:
                    index, width = torch.tensor(rows), max(lengths[i] for i in rows)
                    parts.append(self._embed_padded({name: tensor[index, :width] if tensor.shape == mask.shape
                                                     else tensor[index] for name, tensor in batch.items()}, side))
                order = torch.tensor([i for rows in groups for i in rows])
                return torch.cat(parts).index_select(0, torch.argsort(order).to(parts[0].device))
        return self._embed_padded(batch, side)

    def _embed_padded(self, batch: Mapping[str, torch.Tensor], side: str) -> torch.Tensor:
        """``embed`` of one padded batch as given (one transformer call)."""
        model = self._tower(side)[0]
        device = self.device
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        hidden = model(**inputs, return_dict=True).last_hidden_state
        return self.head(hidden, inputs["attention_mask"], side)

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor, side: str = "query") -> torch.Tensor:
        """Token states ``[N, L, H]`` -> vectors: pooling, the side's projection, normalisation (also used by
        :mod:`.onnx_backend`, whose transformer runs in ONNX Runtime, so both give the same vectors)."""
        emb = pool(hidden, attention_mask, self.pooling_method)
        projection = self._tower(side)[1]
        if projection is not None:
            emb = projection(emb)
        if self.normalize:
            emb = F.normalize(emb, p=2, dim=-1)
        return emb

    def forward(self, query_inputs: Mapping | None = None, key_inputs: Mapping | None = None) -> dict:
        """``{"query": [B, D] | None, "key": [K, D] | None}``: ``embed`` for each side given (DDP calls this)."""
        return {"query": None if query_inputs is None else self.embed(query_inputs, "query"),
                "key": None if key_inputs is None else self.embed(key_inputs, "key")}

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute activations in backward (non-reentrant by default, which works with frozen LoRA bases)."""
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        for model in self._transformers():
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            if getattr(model.config, "use_cache", False):
                model.config.use_cache = False

    def gradient_checkpointing_disable(self) -> None:
        for model in self._transformers():
            model.gradient_checkpointing_disable()

    # ------------------------------------------------------------------ inference path
    def encode(self, texts: Sequence[str], side: str = "key", instruction: str = "", batch_size: int = 64,
               show_progress: bool = True) -> np.ndarray:
        """``[N, D]`` float32 embeddings in input order; batches of similar length, no gradient, eval mode.
        The batches are already cut by token count, so each runs as one call (no ``split_by_length`` groups:
        splitting a sorted batch saves few pads and costs smaller products, ~8% slower in bench_encode)."""
        return self.encode_with(self._embed_padded, texts, side, instruction, batch_size, show_progress)

    def encode_with(self, embed_batch, texts: Sequence[str], side: str = "key", instruction: str = "",
                    batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """:meth:`encode` with ``embed_batch(padded pt batch, side) -> [n, D]`` doing the model work (an
        inference backend such as :mod:`.onnx_backend` passes its own; tokenising and batching stay the same)."""
        texts = _check_texts(texts)
        _check_side(side)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"--batch_size: expected a positive integer, got {batch_size!r}")
        out = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        if not texts:
            return out
        # tokenise once, then batch by token count (tighter padding than sorting by characters)
        encoded = self._token_ids(texts, side, instruction)
        fields = list(encoded.keys())
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), tqdm(total=len(texts), desc=f"encode {side}s", unit="text",
                                              disable=not show_progress) as bar:
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    batch = self.tokenizer.pad([{f: encoded[f][i] for f in fields} for i in rows], padding=True,
                                               return_tensors="pt")
                    out[rows] = embed_batch(batch, side).float().cpu().numpy()
                    bar.update(len(rows))
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, instructions: Mapping | None = None) -> Path:
        """Write an HF + sentence-transformers directory plus ``llm_embedder.json`` (safetensors only).

        ``instructions`` is ``{task: (query_instruction, key_instruction)}`` (default: the ones this encoder
        was loaded with); they become sentence-transformers prompts. The directory is built beside the target
        and moved into place, so an interrupted save never leaves a half-written model.
        """
        instructions = self.instructions if instructions is None else check_instructions(instructions)

        def write(staging: Path) -> None:
            write_tower(self, staging, "query", instructions)
            if not self.tie_encoders:
                write_tower(self, staging / KEY_ENCODER_DIR, "key", instructions)
            write_json(staging / SETTINGS_FILE, settings_record(self, instructions))

        target = write_directory(save_directory, write)
        self.instructions = instructions
        return target

