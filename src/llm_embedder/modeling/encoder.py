"""DenseEncoder: a Hugging Face encoder turned into a text embedder for queries and keys.

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
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..resources import resolve_encoder
from ..schema import default_permissions, write_json
from .pooling import available_poolings, get_pooling, pool

logger = logging.getLogger(__name__)

SIDES = ("query", "key")
SETTINGS_FILE = "llm_embedder.json"  # our settings, written beside the HF / sentence-transformers files
KEY_ENCODER_DIR = "key_encoder"  # untied encoders: the key encoder's own full directory
LORA_ADAPTER_DIR = "lora_adapter"  # the peft adapter, kept beside the merged weights
FORMAT_VERSION = 1

# Built-in values for settings that are neither passed nor saved in the model directory.
DEFAULTS = {"pooling_method": "mean", "normalize": True, "query_max_length": 256, "key_max_length": 256,
            "tie_encoders": True, "add_pooler": False, "projection_out_dim": None}
# sentence-transformers pooling modes we reproduce, by their name in our registry's terms.
_ST_POOLING_TO_OURS = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
_ST_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                           "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Entries a save owns: removed from an existing target directory when this save does not write them.
_OWNED_ENTRIES = re.compile(r"^(key_encoder|lora_adapter|\d+_(Pooling|Dense|Normalize)|model(-\d+-of-\d+)?\.safetensors"
                            r"|model\.safetensors\.index\.json)$")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read JSON ({err})") from None


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


def _check_instructions(instructions) -> dict[str, tuple[str, str]]:
    """``{task: (query_instruction, key_instruction)}``, checked; a UserError names what is wrong."""
    if not isinstance(instructions, Mapping):
        raise UserError(f"instructions: expected {{task: (query_instruction, key_instruction)}}, got {type(instructions).__name__}")
    checked = {}
    for task, pair in instructions.items():
        if isinstance(pair, Mapping):
            pair = (pair.get("query"), pair.get("key"))
        if (not isinstance(task, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)):
            raise UserError(f"instructions[{task!r}]: expected a (query_instruction, key_instruction) pair of strings, got {pair!r}")
        checked[task] = (pair[0], pair[1])
    return checked


def _check_settings(settings: dict, where: str) -> None:
    """Raise a one-line UserError for the first setting with a wrong type or value (``where`` names its source)."""
    def fail(name, what):
        raise UserError(f"{where}{name}: {what}, got {settings[name]!r}")

    if not isinstance(settings["pooling_method"], str):
        fail("pooling_method", "expected a string")
    try:
        get_pooling(settings["pooling_method"])
    except UserError:
        fail("pooling_method", f"expected one of {', '.join(available_poolings())}")
    for name in ("normalize", "tie_encoders", "add_pooler"):
        if not isinstance(settings[name], bool):
            fail(name, "expected true or false")
    for name in ("query_max_length", "key_max_length"):
        if isinstance(settings[name], bool) or not isinstance(settings[name], int) or settings[name] < 1:
            fail(name, "expected a positive integer")
    dim = settings["projection_out_dim"]
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        fail("projection_out_dim", "expected a positive integer")


def _torch_dtype(value):
    if value is None or isinstance(value, torch.dtype) or value == "auto":
        return value
    if value in _DTYPES:
        return _DTYPES[value]
    raise UserError(f"--torch_dtype: unknown dtype {value!r} (choose from auto, {', '.join(_DTYPES)})")


def read_sentence_transformers_layout(path: Path) -> dict:
    """What a sentence-transformers directory says about pooling, normalisation and a Dense layer.

    Returns ``{}`` when ``path`` has no ``modules.json``; otherwise ``pooling_method`` (our name, or the
    unsupported ST mode prefixed with ``unsupported:``), ``normalize``, ``dense_dir`` and ``ignored`` modules.
    """
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {}
    modules = _load_json(modules_file)
    if not isinstance(modules, list):
        raise UserError(f"{modules_file}: expected a list of modules")
    layout: dict = {"normalize": False, "ignored": []}
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        folder = path / module.get("path", "")
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            config = _load_json(folder / "config.json")
            modes = config.get("pooling_mode") or [st for key, st in _ST_LEGACY_POOLING_KEYS.items() if config.get(key)]
            modes = [modes] if isinstance(modes, str) else list(modes)
            supported = len(modes) == 1 and modes[0] in _ST_POOLING_TO_OURS
            layout["pooling_method"] = _ST_POOLING_TO_OURS[modes[0]] if supported else "unsupported:" + "+".join(modes)
        elif kind == "Normalize":
            layout["normalize"] = True
        elif kind == "Dense":
            layout["dense_dir"] = folder
        else:
            layout["ignored"].append(kind)
    return layout


def _load_projection(folder: Path) -> nn.Linear:
    """A projection saved as a sentence-transformers ``Dense`` folder (identity activation, safetensors)."""
    from safetensors.torch import load_file

    config = _load_json(folder / "config.json")
    activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
    if not str(activation).endswith("Identity"):
        raise UserError(f"{folder / 'config.json'}: Dense activation {activation} is not supported (only Identity)")
    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise UserError(f"{folder}: no model.safetensors (pickle weights are never loaded)")
    weights = load_file(weights_file)
    bias = bool(config.get("bias", True))
    linear = nn.Linear(int(config["in_features"]), int(config["out_features"]), bias=bias)
    state = {"weight": weights["linear.weight"]}
    if bias:
        state["bias"] = weights["linear.bias"]
    linear.load_state_dict(state)
    return linear


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but the encoder works without it when LoRA is off
        return False
    return isinstance(model, PeftModel)


def _add_lora(model, rank: int, alpha: float, dropout: float, target_modules):
    """Wrap ``model`` with fresh LoRA adapters; the base weights are frozen by peft."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"--lora_target_modules: {err}".replace("\n", " ")) from None


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
        self.instructions = _check_instructions(instructions or {})
        self.lora = lora  # {"rank", "alpha", "dropout", "target_modules"} when adapters are attached
        self.append_eos = bool(append_eos)  # end every text with the EOS token (last-token pooling on decoders)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, pooling_method: str | None = None,
                        normalize: bool | None = None, query_max_length: int | None = None,
                        key_max_length: int | None = None, tie_encoders: bool | None = None,
                        add_pooler: bool | None = None, projection_out_dim: int | None = None, lora_rank: int = 0,
                        lora_alpha: float = 16.0, lora_dropout: float = 0.1,
                        lora_target_modules: list[str] | str | None = None, torch_dtype=None,
                        append_eos: bool | None = None) -> "DenseEncoder":
        """Load an encoder from an alias (``minilm``) or a local HF / sentence-transformers / saved directory.

        A setting left ``None`` takes the value saved in the directory's ``llm_embedder.json``, else what its
        sentence-transformers modules say (pooling, normalisation), else :data:`DEFAULTS`. A value passed
        explicitly wins (with a warning when it differs from the saved one). LoRA is never restored from a
        directory: saved weights are merged; pass ``lora_rank`` to train new adapters on top.
        """
        explicit = {"pooling_method": pooling_method, "normalize": normalize, "query_max_length": query_max_length,
                    "key_max_length": key_max_length, "tie_encoders": tie_encoders, "add_pooler": add_pooler,
                    "projection_out_dim": projection_out_dim}
        _check_settings({k: DEFAULTS[k] if v is None else v for k, v in explicit.items()}, "--")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise UserError(f"--lora_rank: expected an integer >= 0, got {lora_rank!r}")
        if lora_rank and (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or lora_alpha <= 0):
            raise UserError(f"--lora_alpha: expected a positive number, got {lora_alpha!r}")
        if lora_rank and (isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float))
                          or not 0.0 <= lora_dropout < 1.0):
            raise UserError(f"--lora_dropout: expected a value in [0, 1), got {lora_dropout!r}")
        if add_pooler is False and projection_out_dim is not None:
            raise UserError("--projection_out_dim: needs --add_pooler (or leave --add_pooler unset)")
        dtype = _torch_dtype(torch_dtype)

        path = resolve_encoder(name_or_path)
        settings, saved, layout = cls._resolve_settings(path, explicit)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
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
            model = AutoModel.from_pretrained(folder, local_files_only=True, trust_remote_code=False, dtype=dtype)
            projection = None
            if settings["add_pooler"]:
                hidden = cls._hidden_size_of(model.config)
                out_dim = settings["projection_out_dim"] or hidden
                dense_dir = folder_layout.get("dense_dir") if saved.get("add_pooler") else None
                if dense_dir is not None:
                    projection = _load_projection(dense_dir)
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
        if lora_rank:
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
    def _resolve_settings(path: Path, explicit: dict) -> tuple[dict, dict, dict]:
        """``(settings, saved, layout)``: explicit > llm_embedder.json > sentence-transformers modules > defaults."""
        layout = read_sentence_transformers_layout(path)
        saved: dict = {}
        settings_file = path / SETTINGS_FILE
        if settings_file.is_file():
            saved = _load_json(settings_file)
            if not isinstance(saved, dict):
                raise UserError(f"{settings_file}: expected a JSON object")
            missing = [k for k in DEFAULTS if k not in saved]
            if missing:
                raise UserError(f"{settings_file}: missing {', '.join(missing)}")
            _check_settings(saved, f"{settings_file}: ")
            if saved.get("instructions"):
                saved["instructions"] = _check_instructions(saved["instructions"])
        elif layout:
            if layout["ignored"]:
                logger.warning("%s: ignoring sentence-transformers modules %s", path, ", ".join(layout["ignored"]))
            if "dense_dir" in layout:
                logger.warning("%s: ignoring its sentence-transformers Dense layer (not saved by llm-embedder)", path)
            if "pooling_method" in layout:
                saved["pooling_method"] = layout["pooling_method"]
            saved["normalize"] = layout["normalize"]

        settings = {}
        for name, default in DEFAULTS.items():
            value = explicit[name]
            if value is None:
                value = saved.get(name, default)
            elif name in saved and saved[name] != value:
                logger.warning("%s: %s=%r overrides the saved %r", path, name, value, saved[name])
            settings[name] = value
        if str(settings["pooling_method"]).startswith("unsupported:"):
            raise UserError(f"--pooling_method: {path} uses sentence-transformers pooling "
                            f"'{settings['pooling_method'][12:]}', which is not implemented; pass --pooling_method")
        if explicit["projection_out_dim"] is not None and explicit["add_pooler"] is None:
            settings["add_pooler"] = True  # asking for an output size asks for the projection
        if not settings["add_pooler"]:
            settings["projection_out_dim"] = None
        if settings["tie_encoders"] and saved.get("tie_encoders") is False:
            raise UserError(f"--tie_encoders: {path} holds separate query and key encoders; they cannot be tied on load")
        return settings, saved, layout

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
                "append_eos": self.append_eos}

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
        """``[N, D]`` embeddings of a tokenised batch, with gradient; projected / normalised as configured."""
        model, projection = self._tower(side)
        device = self.device
        inputs = {name: tensor.to(device) for name, tensor in batch.items()}
        hidden = model(**inputs, return_dict=True).last_hidden_state
        emb = pool(hidden, inputs["attention_mask"], self.pooling_method)
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
        """``[N, D]`` float32 embeddings in input order; batches of similar length, no gradient, eval mode."""
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
                    out[rows] = self.embed(batch, side).float().cpu().numpy()
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
        instructions = self.instructions if instructions is None else _check_instructions(instructions)
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise UserError(f"{target}: exists and is not a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            self._write_tower(staging, "query", instructions)
            if not self.tie_encoders:
                self._write_tower(staging / KEY_ENCODER_DIR, "key", instructions)
            write_json(staging / SETTINGS_FILE, self._settings_record(instructions))
            default_permissions(staging)  # mkdtemp is 0700 and safetensors writes 0600
            _publish(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.instructions = instructions
        return target

    def _settings_record(self, instructions: dict, side: str | None = None) -> dict:
        import transformers

        from .. import __version__

        record = {"format_version": FORMAT_VERSION, **self.settings(),
                  "similarity_fn_name": self.similarity_fn_name,
                  "instructions": {task: {"query": q, "key": k} for task, (q, k) in instructions.items()},
                  "lora": None if self.lora is None else {**self.lora, "merged": True, "adapter_dir": LORA_ADAPTER_DIR},
                  "versions": {"llm_embedder": __version__, "torch": torch.__version__,
                               "transformers": transformers.__version__}}
        if side is not None:  # the key encoder's own directory: a standalone, single-encoder description
            record.update(tie_encoders=True, role=side)
        return record

    def _write_tower(self, folder: Path, side: str, instructions: dict) -> None:
        """One full model directory: HF weights + tokenizer, sentence-transformers modules, adapter if any."""
        model, projection = self._tower(side)
        folder.mkdir(parents=True, exist_ok=True)
        if _is_peft(model):
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(folder, safe_serialization=True)
            del merged
            model.save_pretrained(folder / LORA_ADAPTER_DIR, safe_serialization=True)
        else:
            model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self._write_sentence_transformers(folder, projection, instructions)
        if side == "key":
            write_json(folder / SETTINGS_FILE, self._settings_record(instructions, side="key"))

    def _write_sentence_transformers(self, folder: Path, projection: nn.Linear | None, instructions: dict) -> None:
        """modules.json and module folders in the classic layout every sentence-transformers >= 2.3 loads."""
        import sentence_transformers
        import transformers

        st_mode = get_pooling(self.pooling_method).sentence_transformers_mode
        if st_mode is None:
            logger.warning("pooling '%s' has no sentence-transformers equivalent: %s loads with transformers and "
                           "llm-embedder only", self.pooling_method, folder)
            return
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        write_json(folder / "sentence_bert_config.json",
                   {"max_seq_length": max(self.max_lengths.values()), "do_lower_case": False})
        write_json(folder / "1_Pooling" / "config.json",
                   {"word_embedding_dimension": self.hidden_size,
                    **{key: st_mode == mode for key, mode in _ST_LEGACY_POOLING_KEYS.items()},
                    "include_prompt": True})
        if projection is not None:
            from safetensors.torch import save_file

            dense = folder / f"{len(modules)}_Dense"
            dense.mkdir()
            write_json(dense / "config.json", {"in_features": projection.in_features,
                                               "out_features": projection.out_features,
                                               "bias": projection.bias is not None,
                                               "activation_function": "torch.nn.modules.linear.Identity"})
            tensors = {"linear.weight": projection.weight.detach().cpu().contiguous()}
            if projection.bias is not None:
                tensors["linear.bias"] = projection.bias.detach().cpu().contiguous()
            save_file(tensors, str(dense / "model.safetensors"), metadata={"format": "pt"})
            modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense.name,
                            "type": "sentence_transformers.models.Dense"})
        if self.normalize:
            normalize = folder / f"{len(modules)}_Normalize"
            normalize.mkdir()
            modules.append({"idx": len(modules), "name": str(len(modules)), "path": normalize.name,
                            "type": "sentence_transformers.models.Normalize"})
        write_json(folder / "modules.json", modules)
        write_json(folder / "config_sentence_transformers.json", {
            "__version__": {"sentence_transformers": sentence_transformers.__version__,
                            "transformers": transformers.__version__, "pytorch": torch.__version__},
            "model_type": "SentenceTransformer",
            "prompts": sentence_transformers_prompts(instructions),
            "default_prompt_name": None,
            "similarity_fn_name": self.similarity_fn_name,
        })


def sentence_transformers_prompts(instructions: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """ST prompts: ``query`` / ``document`` from the first task, plus ``<task>_query`` / ``<task>_key`` for
    every task when there are several. Empty instructions are left out (no prompt means the same)."""
    prompts: dict[str, str] = {}
    items = list(instructions.items())
    if items:
        query, key = items[0][1]
        prompts.update(query=query, document=key)
    if len(items) > 1:
        for task, (query, key) in items:
            prompts[f"{task}_query"] = query
            prompts[f"{task}_key"] = key
    return {name: text for name, text in prompts.items() if text}


def _publish(staging: Path, target: Path) -> None:
    """Move a finished staging directory into ``target``: one rename when it is new, else entry by entry
    (entries a save owns but this one did not write are removed; other files, e.g. trainer state, stay)."""
    if not target.exists():
        os.replace(staging, target)
        return
    written = {entry.name for entry in staging.iterdir()}
    for entry in target.iterdir():
        if entry.name not in written and _OWNED_ENTRIES.match(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    # settings last: a reader that sees the new llm_embedder.json also sees the new weights
    for entry in sorted(staging.iterdir(), key=lambda e: e.name == SETTINGS_FILE):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
