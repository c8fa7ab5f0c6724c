"""One argument layer for every command: no prefix matching, peer aliases, bare booleans, comma lists, one-line errors.

Every CLI builds its parser from :class:`ArgParser` (plain argparse) or :class:`DataclassParser` (the
``HfArgumentParser`` of ``run_dense.py``). Both

- turn off prefix matching (``allow_abbrev=False``): ``--query_max_len`` is an alias or an error, never an
  accidental abbreviation of ``--query_max_length``;
- accept ``--flag a,b,c`` as well as ``--flag a b c`` for every list option;
- report an unknown option in one line, with the closest known option (difflib), exit status 2, before
  argparse complains about anything else (a misspelt required flag is named as misspelt, not as missing);
- print every other argparse error in one line too.

Peer aliases (Tevatron, Trove, FlagEmbedding) are declared with :func:`arg` in the dataclasses, so they
parse to the same field and ``--help`` lists them next to our name; :func:`peer_aliases` lists them all
for the docs.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import os
import sys
import types
from typing import Any, Iterable, Sequence

PEER_NAMES = {"reference": "LLM-Embedder", "tevatron": "Tevatron", "trove": "Trove", "flagembedding": "FlagEmbedding"}
PEERS = tuple(PEER_NAMES)
_DOC_KEYS = ("peers",)


def arg(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
        **peers: Sequence[str]):
    """A dataclass field with help and peer aliases: ``arg(8, "...", tevatron=["--train_n_passages"])``.

    Each alias parses to this field and is listed in ``--help`` after our name; :func:`peer_aliases` lists
    them for docs/migration.md.
    """
    unknown = set(peers) - set(PEERS)
    if unknown:
        raise TypeError(f"unknown peer {sorted(unknown)}; known: {PEERS}")
    aliases = list(dict.fromkeys(a for names in peers.values() for a in names))  # peers may share a name
    notes = "; ".join(f"{PEER_NAMES[peer]}: {', '.join(names)}" for peer, names in peers.items())
    metadata = {"help": f"{help} [{notes}]" if notes else help}
    if aliases:
        metadata["aliases"] = aliases
        metadata["peers"] = dict(peers)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fail(message: str) -> None:
    """Print ``error: message`` (one line) to stderr and exit 2, as every CLI of this project does."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _OneLineErrors:
    """Mixin for argparse parsers: comma lists, unknown-flag suggestions and one-line errors."""

    def error(self, message):  # noqa: D401 - argparse API
        fail(f"{self.prog}: {message} (see {self.prog} --help)")

    def _list_options(self) -> set[str]:
        return {o for a in self._actions if a.nargs in ("+", "*") for o in a.option_strings}

    def known_options(self) -> list[str]:
        return [o for o in self._option_string_actions if o.startswith("--")]

    def normalise_argv(self, argv: Sequence[str]) -> list[str]:
        """Split comma lists (``--cutoffs 1,5,10`` -> ``1 5 10``); check every ``--option`` exists."""
        lists, known, out = self._list_options(), set(self._option_string_actions), []
        in_list = False
        for i, token in enumerate(argv):
            if token == "--":
                out.extend(argv[i:])
                break
            if token.startswith("--"):
                name, eq, value = token.partition("=")
                if name not in known:
                    close = difflib.get_close_matches(name, self.known_options(), n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    fail(f"{self.prog}: unknown argument {name}{hint}")
                in_list = name in lists
                if in_list and eq:
                    out.extend([name, *_split(value)])
                    continue
                out.append(token)
            elif in_list and not _is_option(token):
                out.extend(_split(token))
            else:
                in_list = in_list and not token.startswith("-")
                out.append(token)
        return out

    def parse_known_args(self, args=None, namespace=None):
        args = self.normalise_argv(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def explicit_dests(self, argv: Sequence[str]) -> frozenset[str]:
        """The destinations (field names) of the options present in ``argv``."""
        found = set()
        for token in argv:
            if token == "--":
                break
            action = self._option_string_actions.get(token.partition("=")[0]) if token.startswith("--") else None
            if action is not None:
                found.add(action.dest)
        return frozenset(found)


def _split(value: str) -> list[str]:
    """A comma list's parts, unless the whole value names an existing file or folder (a recipe folder such as
    ``lr=1e-4,warmup=0.1/train.json`` is one path, not two)."""
    if "," not in value or os.path.exists(value):
        return [value]
    return [part for part in value.split(",") if part]


def _is_option(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default to show: not for None, False or when the help
    text already says it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgParser(_OneLineErrors, argparse.ArgumentParser):
    """``argparse.ArgumentParser`` without prefix matching, with comma lists and one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


class BoolFlag(argparse.Action):
    """A boolean option usable bare (``--normalize``) or with a value (``--normalize false``).

    ``invert=True`` stores the negation (Tevatron's ``--untie_encoder`` sets ``tie_encoders=False``).
    """

    def __init__(self, option_strings, dest, invert: bool = False, default=None, **kwargs):
        kwargs.pop("nargs", None)
        kwargs.pop("const", None)
        kwargs.pop("type", None)
        super().__init__(option_strings, dest, nargs="?", const="true", default=default, **kwargs)
        self.invert = invert

    def __call__(self, parser, namespace, values, option_string=None):
        from transformers.hf_argparser import string_to_bool

        try:
            value = string_to_bool(values)
        except argparse.ArgumentTypeError:
            parser.error(f"{option_string}: expected true or false, got {values!r}")
        setattr(namespace, self.dest, (not value) if self.invert else value)


def dataclass_parser(dataclass_types: Iterable[type], prog: str | None = None):
    """An ``HfArgumentParser`` for ``dataclass_types`` with this module's behaviour; boolean fields bare-usable."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    class DataclassParser(_OneLineErrors, HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            # our metadata keys are for the docs, not for argparse's add_argument
            field = copy.copy(field)
            metadata = {k: v for k, v in field.metadata.items() if k not in _DOC_KEYS}
            if "aliases" in metadata:  # a peer spelling equal to ours is listed in the docs, not added twice
                metadata["aliases"] = [a for a in metadata["aliases"] if a not in (f"--{field.name}", f"--{field.name.replace('_', '-')}")]
            field.metadata = types.MappingProxyType(metadata)
            HfArgumentParser._parse_dataclass_field(parser, field)

    parser = DataclassParser(list(dataclass_types), prog=prog, allow_abbrev=False)
    for action in parser._actions:
        if action.type is string_to_bool and action.nargs is None:  # Optional[bool] fields: allow a bare flag
            action.nargs, action.const = "?", True
    return parser


def dataclass_fields(dataclass_types: Iterable[type]) -> list[tuple[type, dataclasses.Field]]:
    """``(class, field)`` for every init field of ``dataclass_types``, in parser order."""
    return [(cls, f) for cls in dataclass_types for f in dataclasses.fields(cls) if f.init]


def peer_aliases(dataclass_types: Iterable[type]) -> list[tuple[str, str, str]]:
    """``(peer, peer flag, our field)`` for every alias declared with :func:`arg`."""
    rows = []
    for _, f in dataclass_fields(dataclass_types):
        for peer, names in f.metadata.get("peers", {}).items():
            rows.extend((peer, name, f.name) for name in names)
    return rows
