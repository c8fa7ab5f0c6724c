"""Quiet startup: third-party lines that say nothing about the user's run are hidden unless ``--verbose``.

What is hidden (and why it is noise for a user of this tool):

* ``datasets``: ``JAX version ... available`` at INFO (datasets is imported by transformers' Trainer);
* DeepSpeed: ``Setting accelerator to CPU ...`` (its own stdout handler, printed on every CPU start);
* ``faiss.loader``: the INFO lines, including a ``ModuleNotFoundError`` for each CPU flavour it probes;
* transformers' tokenizer advice (``You're using a BertTokenizerFast tokenizer ...``), given per process;
* JAX's ``Unable to initialize backend 'tpu'`` probe line (the JAX trainer, on machines without a TPU).

Warnings and errors of these libraries still show, except DeepSpeed's accelerator line. ``--verbose`` (or
``LLM_EMBEDDER_VERBOSE=1``) leaves every library at its own settings. Call :func:`quiet_third_party` at
the start of a CLI ``main``, before the libraries are imported; it only changes loggers, never handlers.
"""
from __future__ import annotations

import logging
import os

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "LLM_EMBEDDER_VERBOSE"

QUIET_LEVELS = {
    "datasets": logging.WARNING,
    "faiss": logging.WARNING,
    "faiss.loader": logging.WARNING,
    "transformers.tokenization_utils_base": logging.ERROR,
    "jax._src.xla_bridge": logging.WARNING,  # "Unable to initialize backend 'tpu'" on every CPU/GPU start
}
# logger -> message fragments dropped below ERROR (loggers with their own handlers, e.g. DeepSpeed's)
DROPPED_MESSAGES = {"DeepSpeed": ("Setting accelerator to", "Setting ds_accelerator to")}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or os.environ.get(VERBOSE_ENV) == "1":
            return True
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def pop_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--verbose``, and whether it was there (or ``LLM_EMBEDDER_VERBOSE=1`` is set)."""
    verbose = VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV) == "1"
    return [a for a in argv if a != VERBOSE_FLAG], verbose


def quiet_third_party(verbose: bool = False) -> None:
    """Hide the startup noise listed in the module docstring; ``verbose=True`` restores it (and passes the
    choice to child processes through ``LLM_EMBEDDER_VERBOSE``)."""
    if verbose or os.environ.get(VERBOSE_ENV) == "1":
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.setdefault("DATASETS_VERBOSITY", "warning")
    for name, level in QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    for name, fragments in DROPPED_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
