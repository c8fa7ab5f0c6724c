"""Installed entry points (issue 11, point 2): the `evaluation` package ships with the project, and
`llm-embedder train | mine | evaluate | score | encode | search` are the reference's mains under one command."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_embedder import cli


def test_pyproject_installs_both_packages(repo_root):
    from setuptools.config.pyprojecttoml import read_configuration

    tool = read_configuration(repo_root / "pyproject.toml", expand=True)["tool"]["setuptools"]
    packages, package_dir = set(tool["packages"]), tool["package-dir"]
    assert "evaluation" in packages and package_dir.get("evaluation") == "evaluation"
    on_disk = {".".join(p.parent.relative_to(repo_root / "src").parts)
               for p in (repo_root / "src" / "llm_embedder").rglob("__init__.py")}
    assert on_disk <= packages, on_disk - packages  # every subpackage of the library, none forgotten
    assert package_dir.get("") == "src"


@pytest.mark.parametrize("name", ["train", "mine", "evaluate", "score", "encode", "search", "convert", "validate", "report"])
def test_every_subcommand_resolves_to_a_main(name):
    module, func = cli.SUBCOMMANDS[name][0].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_subcommands_are_the_reference_mains():
    from llm_embedder.lm import run as lm_run
    from llm_embedder.retrieval import eval_cli
    from llm_embedder.training import run as train_run

    import evaluation.eval_retrieval
    import run_dense
    import run_lm_score

    target = lambda name: getattr(importlib.import_module(cli.SUBCOMMANDS[name][0].split(":")[0]),  # noqa: E731
                                  cli.SUBCOMMANDS[name][0].split(":")[1])
    assert target("train") is train_run.main is run_dense.main
    assert target("evaluate") is eval_cli.main is evaluation.eval_retrieval.main
    assert target("score") is lm_run.main is run_lm_score.main


def test_mine_is_evaluate_with_collate_neg(monkeypatch):
    from llm_embedder.retrieval import eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["mine", "--eval_data", "x.json"]) == 0
    assert cli.main(["mine", "--eval_data", "x.json", "--metrics", "collate_neg", "recall"]) == 0
    assert seen == [["--eval_data", "x.json", "--metrics", "collate_neg"],
                    ["--eval_data", "x.json", "--metrics", "collate_neg", "recall"]]


@pytest.mark.slow
def test_built_wheel_runs_every_step_from_another_folder(repo_root, tmp_path):
    """Build the wheel from a copy of the sources, unpack it into a target folder, and run the entry points
    from a folder outside the repository with only that target on the path."""
    src = tmp_path / "src-copy"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / item, src / item)
    for item in ("src", "evaluation"):
        shutil.copytree(repo_root / item, src / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(wheels)], check=True, capture_output=True, timeout=240)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=240)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    for argv in (["-m", "evaluation.eval_retrieval", "--help"], ["-m", "llm_embedder.cli", "mine", "--help"],
                 ["-m", "llm_embedder.cli", "score", "--help"]):
        done = subprocess.run([sys.executable, *argv], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "--eval_data" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import evaluation, llm_embedder; print(evaluation.__file__, llm_embedder.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60).stdout
    assert where.count(str(target)) == 2  # imported from the installed copy, not from the repository


def test_train_subcommand_exits_0_although_run_dense_returns_metrics(monkeypatch):
    from llm_embedder.training import run as train_run

    monkeypatch.setattr(train_run, "main", lambda argv: {"eval_ndcg@10": 0.5})
    assert cli.main(["train", "--output_dir", "x"]) == 0


def test_a_mistyped_subcommand_names_the_closest_one(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["trian", "--output_dir", "x"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown command 'trian' (did you mean 'train'? known: ") and err.count("\n") == 0
