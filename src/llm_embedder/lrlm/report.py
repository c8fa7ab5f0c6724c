"""``python -m llm_embedder.lrlm.report OUT``: the study table and figure from eval_lm's per-target files.

Reads ``OUT/eval-valid`` and ``OUT/eval-test`` (written by ``scripts/lrlm-study.sh``): rows labelled
``dense:<recipe>-s<seed>`` are trained encoders. The recipe is chosen on the VALID files (lowest mean NLL
over seeds); the test table reports every row (trained rows as mean ± std over seeds), the paired 95%
interval of the chosen recipe (per-target NLL averaged over its seeds) against the best baseline, and the
share of the gap between that baseline and the definition's chunk it recovers. Writes ``OUT/study.json``,
``OUT/study.md`` and a PNG (perplexity per row with 95% intervals).

Without a valid folder (``--valid_dir none``: eval_lm's ``--task qa`` on PubMedQA, whose trained encoders come from
``benchmarks/quality.py``), no recipe is chosen: every distilled recipe is compared with the best baseline and with
``contrastive``, the hard-label recipe trained on the same data, so nothing is picked on test.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..schema import write_json
from . import metrics
from ..argparsing import ArgParser

BASELINES = ("none", "random", "bm25", "dense:minilm")
HARD_LABEL = "contrastive"  # contrastive on the teacher's top-1: a baseline, never the chosen distilled recipe
ORDER = ("kl", "stable", "contrastive_kl")  # tie-break on valid (the order of the study script's RECIPES)
TRAINED = re.compile(r"^dense:(?P<recipe>.+)-s(?P<seed>\d+)$")


def _rows(folder: Path, k: int) -> dict[str, list[float]]:
    out = {}
    for path in sorted(folder.glob(f"*.k{k}.jsonl")):
        if path.name.endswith(".partial.jsonl"):
            continue
        label = path.name[:-len(f".k{k}.jsonl")]
        label = label.replace("dense_", "dense:", 1) if label.startswith("dense_") else label
        out[label] = [json.loads(line)["nll"] for line in path.read_text().splitlines() if line.strip()]
    return out


def _by_recipe(rows: dict[str, list[float]]) -> dict[str, dict[int, list[float]]]:
    recipes: dict[str, dict[int, list[float]]] = {}
    for label, v in rows.items():
        m = TRAINED.match(label)
        if m:
            recipes.setdefault(m["recipe"], {})[int(m["seed"])] = v
    return recipes


def _seed_mean(seeds: dict[int, list[float]]) -> list[float]:
    """Per-target NLL averaged over a recipe's seeds."""
    return list(np.mean(list(seeds.values()), axis=0))


def study(out: Path, k: int = 1, test_dir: Path | None = None, valid_dir: Path | None | str = "default") -> dict:
    """The study result; ``valid_dir=None``: no valid split, no recipe chosen (see the module docstring)."""
    test_dir = Path(test_dir) if test_dir else out / "eval-test"
    valid_dir = out / "eval-valid" if valid_dir == "default" else valid_dir
    valid, test = (_rows(Path(valid_dir), k) if valid_dir else {}), _rows(test_dir, k)
    valid_recipes, test_recipes = _by_recipe(valid), _by_recipe(test)
    if not test_recipes:
        raise SystemExit(f"{test_dir} has no trained rows (dense:<recipe>-s<seed>)")
    valid_mean = {r: float(np.mean([np.mean(v) for v in s.values()])) for r, s in valid_recipes.items()}
    chosen, tied = None, []
    if valid_dir:
        distilled = [r for r in valid_mean if r != HARD_LABEL]
        if not distilled:
            raise SystemExit(f"{valid_dir} has no distillation recipe rows")
        rank = lambda r: (valid_mean[r], ORDER.index(r) if r in ORDER else len(ORDER), r)  # noqa: E731
        chosen = min(distilled, key=rank)
        tied = sorted(r for r in distilled if abs(valid_mean[r] - valid_mean[chosen]) < 1e-9)
    table = {}
    for label in [b for b in BASELINES if b in test] + ["privileged", "fitted", "oracle"]:
        if label in test:
            table[label] = metrics.summarise(test[label])
    for recipe, seeds in sorted(test_recipes.items()):
        per_seed = [float(np.mean(v)) for v in seeds.values()]
        table[f"trained:{recipe}"] = {"seeds": len(per_seed), "mean_nll": float(np.mean(per_seed)),
                                      "std_nll": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                                      "ppl": math.exp(float(np.mean(per_seed))),
                                      "valid_mean_nll": float(np.mean([np.mean(v) for v in valid_recipes.get(recipe, {}).values()]))
                                      if recipe in valid_recipes else None}
    baselines = {b: test[b] for b in BASELINES if b in test and b != "none"}
    contrastive = test_recipes.get(HARD_LABEL)
    if contrastive:
        baselines[f"trained:{HARD_LABEL}"] = _seed_mean(contrastive)
    best = min(baselines, key=lambda b: np.mean(baselines[b]))
    distilled_test = {r: _seed_mean(s) for r, s in sorted(test_recipes.items()) if r != HARD_LABEL}
    references = {**{b: v for b, v in test.items() if b in BASELINES + ("privileged", "fitted", "oracle") and b != "none"},
                  **{f"trained:{r}": _seed_mean(s) for r, s in sorted(test_recipes.items())}}
    pairwise = {f"trained:{r}": {o: metrics.paired(_seed_mean(s), v) for o, v in references.items()
                                 if o != f"trained:{r}"} for r, s in sorted(test_recipes.items())}
    result = {"k": k, "chosen_recipe_on_valid": chosen, "tied_on_valid": tied, "rows": table, "best_baseline": best,
              "each_recipe_vs_best_baseline": {r: pairwise[f"trained:{r}"][best] for r in distilled_test},
              "valid_mean_nll": valid_mean, "pairwise": pairwise}
    if contrastive:  # the question the study asks: soft labels against hard labels from the same data
        result["each_recipe_vs_contrastive"] = {r: pairwise[f"trained:{r}"][f"trained:{HARD_LABEL}"] for r in distilled_test}
    if chosen is None:
        return result
    chosen_nll = distilled_test[chosen]
    result.update(chosen_vs_best_baseline=metrics.paired(chosen_nll, baselines[best]),
                  chosen_per_seed_vs_best_baseline={s: metrics.paired(v, baselines[best])
                                                    for s, v in test_recipes[chosen].items()})
    if "fitted" in test:  # the feature ranker fitted on the same teacher scores: a learned, non-neural reference
        result["fitted_vs_best_baseline"] = metrics.paired(test["fitted"], baselines[best])
        result["chosen_vs_fitted"] = metrics.paired(chosen_nll, test["fitted"])
    if "privileged" in test:
        gap = np.mean(baselines[best]) - np.mean(test["privileged"])
        result["share_of_gap_to_definition_recovered"] = float((np.mean(baselines[best]) - np.mean(chosen_nll)) / gap) if gap else None
    return result


def _needed(c: dict, before: str = "; ", after: str = "") -> str:
    """', ~N targets would make this mean significant' for a positive mean that is not yet significant."""
    n = c.get("targets_needed")
    if n is None or c["significant"] or c["mean_gain_nats"] <= 0:
        return ""
    return f"{before}~{n:,} targets would make this mean significant{after}"


def markdown(result: dict) -> str:
    lines = ["| row | test perplexity | mean NLL (nats/token) | 95% CI / seed std |", "|---|---|---|---|"]
    for label, s in result["rows"].items():
        spread = f"[{s['ppl_ci95'][0]:.3f}, {s['ppl_ci95'][1]:.3f}]" if "ppl_ci95" in s else \
            (f"± {s['std_nll']:.4f} nats ({s['seeds']} seeds)" if s["seeds"] > 1 else "1 seed (no spread)")
        lines.append(f"| {label} | {s['ppl']:.3f} | {s['mean_nll']:.4f} | {spread} |")
    lines.append("")
    if result["chosen_recipe_on_valid"] is None:
        also = "" if result["best_baseline"] == f"trained:{HARD_LABEL}" else f" and against `{HARD_LABEL}`"
        lines.append(f"No valid split, so no recipe is chosen; each trained recipe against the best baseline "
                     f"`{result['best_baseline']}`{also} (NLL(other) − NLL(recipe), positive = the recipe is better; "
                     "per target, the mean over its seeds):")
    else:
        c = result["chosen_vs_best_baseline"]
        tie = f" (tied on valid with {', '.join(t for t in result['tied_on_valid'] if t != result['chosen_recipe_on_valid'])})" \
            if len(result.get("tied_on_valid", [])) > 1 else ""
        lines.append(f"Chosen on valid: `{result['chosen_recipe_on_valid']}`{tie}; vs best baseline `{result['best_baseline']}`: "
                     f"{c['mean_gain_nats']:+.4f} nats/token, paired 95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] "
                     f"({c['wins']} wins / {c['losses']} losses of {c['targets']}{_needed(c)}).")
    groups = [("each_recipe_vs_best_baseline", result["best_baseline"])]
    if result["best_baseline"] != f"trained:{HARD_LABEL}":
        groups.append(("each_recipe_vs_contrastive", HARD_LABEL))
    for key, other in groups:
        for r, c in result.get(key, {}).items():
            lines.append(f"- `{r}` vs `{other}`: {c['mean_gain_nats']:+.4f} nats/token, "
                         f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ({c['wins']} wins / {c['losses']} losses{_needed(c)})")
    for key, name in (("fitted_vs_best_baseline", f"`fitted` vs `{result['best_baseline']}`"),
                      ("chosen_vs_fitted", f"`{result['chosen_recipe_on_valid']}` vs `fitted`")):
        if key in result:
            c = result[key]
            lines.append(f"- {name}: {c['mean_gain_nats']:+.4f} nats/token, [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]"
                         f"{_needed(c, ' (', ')')}")
    lines += ["", *pairwise_table(result["pairwise"])]
    if result.get("share_of_gap_to_definition_recovered") is not None:
        lines.append(f"Share of the gap between `{result['best_baseline']}` and the definition's chunk recovered: "
                     f"{result['share_of_gap_to_definition_recovered']:.2f}.")
    return "\n".join(lines) + "\n"


def pairwise_table(pairwise: dict[str, dict[str, dict]]) -> list[str]:
    """Each trained recipe (per target, the mean over its seeds) against every other row: NLL(other) −
    NLL(recipe) [paired 95% CI], wins/losses; ``*`` where the interval excludes 0."""
    others = list(dict.fromkeys(o for row in pairwise.values() for o in row))
    lines = ["| trained row | " + " | ".join(f"vs {o}" for o in others) + " |", "|---|" + "---|" * len(others)]
    for recipe, row in pairwise.items():
        cells = [(f"{c['mean_gain_nats']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]{' *' if c['significant'] else ''}, "
                  f"{c['wins']}/{c['losses']}") if (c := row.get(o)) else "–" for o in others]
        lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
    return lines + ["", "(NLL(other) − NLL(row) in nats per token, positive = the row is better; per target, the mean "
                        "over the row's seeds; wins/losses = targets; *: the interval excludes 0.)"]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(result["rows"])
    ppl = [result["rows"][n]["ppl"] for n in labels]
    lo, hi = [], []
    for n in labels:
        s = result["rows"][n]
        if "ppl_ci95" in s:
            lo.append(s["ppl"] - s["ppl_ci95"][0]); hi.append(s["ppl_ci95"][1] - s["ppl"])
        else:
            lo.append(s["ppl"] - math.exp(s["mean_nll"] - s["std_nll"])); hi.append(math.exp(s["mean_nll"] + s["std_nll"]) - s["ppl"])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    y = np.arange(len(labels))[::-1]
    ax.errorbar(ppl, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.set_yticks(y, labels)
    ax.set_xlabel("SmolLM2 perplexity on held-out targets (lower is better); bars: 95% bootstrap CI, trained rows: ± seed std")
    ax.xaxis.label.set_size(7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = ArgParser(prog="python -m llm_embedder.lrlm.report")
    p.add_argument("out", help="the study folder (OUT of scripts/lrlm-study.sh)")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--png", default=None)
    p.add_argument("--test_dir", default=None, help="eval_lm's output on the test targets (default OUT/eval-test)")
    p.add_argument("--valid_dir", default=None,
                   help="eval_lm's output on the valid targets, where the recipe is chosen (default OUT/eval-valid); "
                        "'none': no valid split, no recipe chosen, each recipe compared")
    args = p.parse_args(argv)
    out = Path(args.out)
    valid_dir = "default" if args.valid_dir is None else (None if args.valid_dir == "none" else Path(args.valid_dir))
    result = study(out, args.k, Path(args.test_dir) if args.test_dir else None, valid_dir)
    write_json(out / "study.json", result)
    text = markdown(result)
    atomic_write(out / "study.md", lambda f: f.write(text))
    plot(result, Path(args.png) if args.png else out / "study.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
