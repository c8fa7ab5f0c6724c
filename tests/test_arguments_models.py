"""Models by name: alias, local folder, or a Hugging Face id resolved through the hub cache (a fake one here)."""
from __future__ import annotations

import shutil

import pytest

from llm_embedder.errors import UserError
from llm_embedder.resources import resolve_encoder, resolve_lm

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def fake_hub(tmp_path, tiny_bert_dir, monkeypatch):
    """A hub cache holding ``acme/tiny-bert`` the way huggingface_hub lays it out, and offline mode."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-bert"
    shutil.copytree(tiny_bert_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_resolves_to_its_cached_snapshot(fake_hub, tmp_path):
    snapshot = fake_hub / "models--acme--tiny-bert" / "snapshots" / COMMIT
    assert resolve_encoder("acme/tiny-bert") == snapshot
    assert resolve_lm("acme/tiny-bert") == (snapshot, None)
    moved = tmp_path / "other-cache"
    shutil.copytree(fake_hub, moved)
    assert resolve_encoder("acme/tiny-bert", cache=moved) == moved / "models--acme--tiny-bert" / "snapshots" / COMMIT


def test_an_uncached_id_offline_is_one_line_naming_the_aliases(fake_hub):
    with pytest.raises(UserError) as err:
        resolve_encoder("acme/not-downloaded", "--query_encoder")
    message = str(err.value)
    assert "\n" not in message and message.startswith("--query_encoder: 'acme/not-downloaded'")
    assert "minilm" in message and "offline" in message


def test_a_missing_path_is_not_taken_for_a_hub_id(fake_hub, tmp_path):
    with pytest.raises(UserError, match="neither a local model directory, a known alias .*minilm"):
        resolve_encoder(str(tmp_path / "no" / "such" / "model"))


def test_run_dense_and_eval_retrieval_load_a_model_by_hub_id(fake_hub, tmp_path, capsys):
    import json

    from llm_embedder.retrieval.eval_cli import main as eval_main
    from llm_embedder.training.run import build_trainer, parse_args

    trainer = build_trainer(*parse_args(["--model_name_or_path", "acme/tiny-bert", "--output_dir", str(tmp_path / "o"),
                                         "--train_data", "llm-embedder:llm_embedder_toy/qa.json", "--use_cpu"]))
    assert trainer.model is not None
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "paris is in france"}\n{"_id": "b", "text": "the moon"}\n')
    records = tmp_path / "q.json"
    records.write_text('{"query": "capital of france", "answers": ["paris"]}\n')
    assert eval_main(["--eval_data", str(records), "--corpus", str(corpus), "--query_encoder", "acme/tiny-bert",
                      "--metrics", "nq", "--cutoffs", "2", "--hits", "2", "--cache_dir", str(tmp_path / "c")]) == 0
    assert json.loads(next(tmp_path.glob("q.eval.*.json")).read_text())["metrics"] == {"nq@2": 1.0}


def test_cache_dir_is_the_checkouts_own_or_the_users_for_an_installed_wheel(tmp_path, monkeypatch):
    """A wheel installed into site-packages must not cache converted models inside the install folder."""
    from llm_embedder import resources

    monkeypatch.delenv(resources.CACHE_ENV, raising=False)
    assert resources.cache_dir() == resources.project_root() / ".cache"  # this checkout
    installed = tmp_path / "site-packages"
    installed.mkdir()
    monkeypatch.setattr(resources, "project_root", lambda: installed)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir() == tmp_path / "xdg" / "llm-embedder"
    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "mine"))
    assert resources.cache_dir() == tmp_path / "mine"
