"""Resumable scoring: finished pair scores are logged next to the output so a killed run does not rescore them.

The log is a folder ``{output}.partial/`` holding ``fingerprint.json`` (the identity of the work: every
pair's token ids, the model, dtype and batching) and append-only JSON-lines files, one per rank and
attempt (``scores.{attempt}.rank{r}.jsonl``, lines ``{"pair": i, "score": x}``). Each save appends whole
lines and fsyncs; a line torn by a kill is ignored on reading. A folder whose fingerprint differs from the
current run is never mixed in: that is an error telling the user to delete it. The folder is removed once
the complete output has been written.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError
from ..schema import write_json

SCORES_RE = re.compile(r"scores\.(\d+)\.rank(\d+)\.jsonl$")


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def remove_partial(output: Path) -> None:
    """Delete the partial-scores folder of ``output`` (once the complete output is written)."""
    shutil.rmtree(partial_dir(Path(output)), ignore_errors=True)


class PartialScores:
    """One rank's view of the partial-scores folder of ``output`` for the work identified by ``fingerprint``."""

    def __init__(self, output: Path, fingerprint: str, rank: int = 0):
        self.dir = partial_dir(Path(output))
        self.fingerprint = fingerprint
        self.rank = rank
        self.attempt: int | None = None
        self._pending: list[tuple[int, float]] = []

    def check(self) -> None:
        """Raise if the folder holds scores of different work."""
        path = self.dir / "fingerprint.json"
        if not path.is_file():
            if self.dir.exists() and any(self.dir.iterdir()):
                raise UserError(f"{self.dir}: partial scores without fingerprint.json; delete the folder to start over")
            return
        found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        if found != self.fingerprint:
            raise UserError(f"{self.dir}: partial scores of a different run (inputs, model or arguments changed); "
                            "delete the folder to start over")

    def load(self, n_pairs: int) -> dict[int, float]:
        """Scores already saved by any rank of any earlier attempt (after :meth:`check`)."""
        self.check()
        done: dict[int, float] = {}
        attempts = [-1]
        for path in sorted(self.dir.glob("scores.*.jsonl")) if self.dir.is_dir() else []:
            match = SCORES_RE.search(path.name)
            if not match:
                continue
            attempts.append(int(match.group(1)))
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                    pair, score = int(item["pair"]), float(item["score"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill
                if 0 <= pair < n_pairs and math.isfinite(score):
                    done[pair] = score
        self.attempt = max(attempts) + 1
        return done

    def start(self) -> None:
        """Create the folder and the fingerprint (rank 0, before any rank saves)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "fingerprint.json").is_file():
            write_json(self.dir / "fingerprint.json", {"fingerprint": self.fingerprint})

    def add(self, pairs: list[int], scores: list[float]) -> None:
        self._pending.extend(zip(pairs, scores))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Append the pending scores as whole lines and fsync them."""
        if not self._pending:
            return
        if self.attempt is None:
            raise RuntimeError("call load() before saving")
        text = "".join(json.dumps({"pair": p, "score": s}) + "\n" for p, s in self._pending)
        path = self.dir / f"scores.{self.attempt}.rank{self.rank}.jsonl"
        with open(path, "a", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        self._pending.clear()
