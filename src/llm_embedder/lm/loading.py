"""Load the causal LM that scores keys: a local Hugging Face directory or an alias (``smollm2``).

GGUF aliases are dequantised once (about 25 s for SmolLM2) and saved as safetensors under
``resources.cache_dir()/lm/<alias>``; later loads read that folder (about 3 s). The conversion is written
to a temporary folder and renamed into place, so a killed conversion never leaves a half-written cache
and concurrent processes (torchrun ranks) cannot corrupt it. Nothing is downloaded and remote code is
never run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..resources import cache_dir, canonical_lm_name, resolve_lm

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CONVERSION_INFO = "conversion.json"


@dataclass
class LoadedLM:
    """A causal LM ready for scoring, with what is needed to describe it in a meta file."""

    model: torch.nn.Module
    tokenizer: object
    path: Path  # the folder the weights were loaded from
    alias: str | None  # ``smollm2`` when loaded by alias
    source: str  # the original weights (GGUF file or the local folder)
    dtype: str

    def describe(self) -> dict:
        return {"path": str(self.path), "alias": self.alias, "source": self.source, "dtype": self.dtype,
                "class": type(self.model).__name__, "num_parameters": sum(p.numel() for p in self.model.parameters())}


def lm_files(folder: str | os.PathLike) -> dict[str, int]:
    """Names and sizes of the LM folder's weight, config and tokenizer files: what identifies the model for a
    resume (not the folder's path, which changes with the venv or checkout holding it, nor mtimes)."""
    root = Path(folder)
    return {str(path.relative_to(root)): path.stat().st_size for path in sorted(root.rglob("*"))
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf")}


def lm_identity(info: dict) -> dict:
    """``describe()``'s fields (or a smaller dict with ``path``) with the paths replaced by the folder's files:
    the same model scores the same wherever its cache or checkout lives, so a partial file stays valid."""
    return {**{k: v for k, v in info.items() if k not in ("path", "source")}, "files": lm_files(info["path"])}


def dtype_name(dtype: str | torch.dtype) -> str:
    """``"float32"``/``"bfloat16"`` from a name or a torch dtype; anything else is a UserError."""
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise UserError(f"dtype '{dtype}' is not supported for scoring (choose {', '.join(DTYPES)})")
    return name


def converted_dir(alias: str) -> Path:
    """Where the safetensors copy of a GGUF alias is cached."""
    return cache_dir() / "lm" / alias


def gguf_add_bos(gguf_path: str | os.PathLike) -> bool | None:
    """The GGUF file's ``tokenizer.ggml.add_bos_token`` flag (None when the file does not say or is unreadable)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    except (ValueError, OSError):  # not a GGUF header transformers could have read either: keep the tokenizer's
        return None
    return None if field is None or not field.data else bool(field.parts[field.data[0]][0])


def apply_gguf_bos(tokenizer, gguf_path: str | os.PathLike):
    """Make ``tokenizer`` add a BOS exactly when the GGUF file says the model expects one.

    transformers' GGUF conversion builds a LlamaTokenizerFast that always adds BOS, even for SmolLM2,
    whose GGUF says ``add_bos_token = false`` (it was trained without one); LM scoring prepends what the
    tokenizer adds (``lm.tokens.special_prefix``), so the flag must be the model's.
    """
    flag = gguf_add_bos(gguf_path)
    if flag is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = flag
    return tokenizer


def convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> Path:
    """Dequantise ``src_dir/gguf_file`` to float32 safetensors in ``dest`` (temp folder, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        tokenizer = apply_gguf_bos(AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file), src_dir / gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp, legacy_format=False)  # tokenizer.json only, no 98 MB slow-tokenizer file
        gguf = src_dir / gguf_file
        info = {"source": str(gguf), "source_bytes": gguf.stat().st_size, "dtype": "float32"}
        (tmp / CONVERSION_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first: keep its copy
            if not (dest / CONVERSION_INFO).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _cached_conversion(src_dir: Path, gguf_file: str, dest: Path) -> bool:
    """True when ``dest`` holds a finished conversion of this very GGUF file."""
    info_path = dest / CONVERSION_INFO
    if not info_path.is_file():
        return False
    info = json.loads(info_path.read_text(encoding="utf-8"))
    gguf = src_dir / gguf_file
    return info.get("source_bytes") == gguf.stat().st_size


def local_lm_dir(name_or_path: str | os.PathLike, argument: str = "--model_name_or_path") -> tuple[Path, str | None, str]:
    """``(folder to load, alias or None, original source)``; converts a GGUF alias on first use."""
    src_dir, gguf_file = resolve_lm(name_or_path, argument)
    if gguf_file is None:
        if not (src_dir / "config.json").is_file():
            raise UserError(f"{argument}: {src_dir} has no config.json (not a Hugging Face model folder)")
        return src_dir, None, str(src_dir)
    alias = canonical_lm_name(name_or_path)  # one conversion per model, whichever of its names was given
    dest = converted_dir(alias)
    if not _cached_conversion(src_dir, gguf_file, dest):
        if dest.exists():  # stale or foreign content: replace it
            shutil.rmtree(dest)
        convert_gguf(src_dir, gguf_file, dest)
    return dest, alias, str(src_dir / gguf_file)


def load_tokenizer(folder: Path, argument: str = "--model_name_or_path"):
    """The LM's tokenizer; for a converted GGUF, adding BOS exactly as the GGUF says (:func:`apply_gguf_bos`)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{argument}: cannot load a tokenizer from {folder}: {_first_line(err)}") from None
    info_path = Path(folder) / CONVERSION_INFO
    if info_path.is_file():  # also fixes conversions cached before the flag was applied
        source = json.loads(info_path.read_text(encoding="utf-8")).get("source")
        if source and Path(source).is_file():
            apply_gguf_bos(tokenizer, source)
    return tokenizer


def load_model(folder: Path, dtype: str | torch.dtype = "float32", argument: str = "--model_name_or_path") -> torch.nn.Module:
    """The causal LM in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype_name(dtype)], local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{argument}: cannot load a causal LM from {folder}: {_first_line(err)}") from None
    model.eval()
    model.requires_grad_(False)
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_lm(name_or_path: str | os.PathLike, dtype: str | torch.dtype = "float32",
            argument: str = "--model_name_or_path") -> LoadedLM:
    """Load a causal LM and its tokenizer for scoring (converting a GGUF alias on first use)."""
    name = dtype_name(dtype)
    folder, alias, source = local_lm_dir(name_or_path, argument)
    tokenizer = load_tokenizer(folder, argument)
    model = load_model(folder, name, argument)
    return LoadedLM(model, tokenizer, folder, alias, source, name)


__all__ = ["apply_gguf_bos", "gguf_add_bos", "LoadedLM", "load_lm", "load_tokenizer", "load_model", "converted_dir", "convert_gguf", "local_lm_dir", "dtype_name", "DTYPES"]
