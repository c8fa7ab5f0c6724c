"""Plot ours / sentence-transformers speed ratios from the benchmark result files (no benchmark is re-run).

Each ``bench_train*.json`` (training steps) and ``bench_encode*.json`` (encoding) written by
``benchmarks/bench_train.py`` / ``benchmarks/bench_encode.py`` gives one bar per compared side, labelled with the
file's own settings, so the figure shows every committed run, good and bad, with the 1.0 (parity) line and the
issue's goals (1.1 for training, 1.25 for encoding).

    .venv/bin/python benchmarks/plot_speed.py     # writes docs/img/speed_ratios.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOALS = {"training": 1.1, "encoding": 1.25}


def load_note(data: dict) -> str:
    """The 1-minute load average the run recorded (a loaded machine makes ratios unreliable)."""
    machine = data.get("machine", {})
    loads = [machine[k][0] for k in ("loadavg_at_start", "loadavg_at_end") if machine.get(k)]
    return f" (load {max(loads):.1f})" if loads else ""


def train_bar(data: dict, name: str) -> tuple[str, float]:
    """One training run: its ratio and a label from the flags that change the work."""
    overrides = data.get("config_overrides_both_sides") or ""
    if "attention_probs_dropout_prob=0" in overrides.replace(" ", ""):
        parts = ["no attn dropout, both sides"]
    elif data.get("ours_fast_attention_dropout", False):
        parts = ["our attn dropout"]
    else:  # files written before the option existed used torch's
        parts = ["torch attn dropout"]
    if data.get("ours_split_batch_by_length") is False:
        parts.append("no length groups")
    return f"{name}{load_note(data)}\n{', '.join(parts)}", float(data["ratio_ours_over_sentence_transformers"])


def encode_bars(data: dict, name: str) -> list[tuple[str, float]]:
    """One encoding run: a bar per our backend (torch, onednn, onnxruntime) against SentenceTransformer.encode."""
    ratios = data.get("ratio_over_sentence_transformers") or {"torch": data["ratio_ours_over_sentence_transformers"]}
    bars = []
    for side, ratio in ratios.items():
        backend = side.split("--encode_backend ")[-1] if "--encode_backend" in side else "torch"
        bars.append((f"{name}{load_note(data)}\n{backend}", float(ratio)))
    return bars


def collect(results: Path) -> dict[str, list[tuple[str, float]]]:
    bars: dict[str, list[tuple[str, float]]] = {"training": [], "encoding": []}
    for path in sorted(results.glob("bench_train*.json")):
        bars["training"].append(train_bar(json.loads(path.read_text()), path.stem.replace("bench_train", "train")))
    for path in sorted(results.glob("bench_encode*.json")):
        bars["encoding"].extend(encode_bars(json.loads(path.read_text()), path.stem.replace("bench_encode", "encode")))
    if not bars["training"] and not bars["encoding"]:
        raise SystemExit(f"error: no bench_train*.json or bench_encode*.json in {results}")
    return bars


def draw(bars: dict[str, list[tuple[str, float]]], png: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("training", "encoding") if bars[k]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.0 * len(kinds), 5.0), dpi=120, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        labels, ratios = zip(*bars[kind])
        colors = ["tab:green" if r >= GOALS[kind] else "tab:orange" if r >= 1.0 else "tab:red" for r in ratios]
        ax.bar(range(len(ratios)), ratios, color=colors)
        for i, r in enumerate(ratios):
            ax.text(i, r + 0.01, f"{r:.2f}", ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(GOALS[kind], color="tab:green", lw=0.8, ls="--", label=f"goal {GOALS[kind]}")
        ax.set_xticks(range(len(ratios)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("ours / sentence-transformers, examples/s")
        ax.set_title(f"{kind}: one process, alternating, MiniLM, 2 CPU threads", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--output", default=str(HERE.parent / "docs" / "img" / "speed_ratios.png"))
    args = p.parse_args(argv)
    print(f"wrote {draw(collect(Path(args.results)), Path(args.output))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
