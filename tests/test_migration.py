"""docs/migration.md: its generated tables are current, every reference default we change has a reason,
and every command it documents parses with our parsers."""
from __future__ import annotations

import re
import shlex

import pytest

from llm_embedder import migration


def test_generated_tables_in_the_doc_are_current(repo_root):
    assert migration.main(["--doc", str(repo_root / "docs" / "migration.md"), "--check"]) == 0


def test_stale_doc_is_detected(repo_root, tmp_path):
    doc = tmp_path / "migration.md"
    doc.write_text((repo_root / "docs" / "migration.md").read_text().replace("| `--hits` | `200` | `200` |", "| `--hits` | `200` | `100` |"))
    assert migration.main(["--doc", str(doc), "--check"]) == 1


@pytest.mark.parametrize("reference, ours", [
    (migration.REFERENCE_RUN_DENSE, migration.run_dense_defaults),
    (migration.REFERENCE_EVAL, migration.eval_defaults),
])
def test_every_changed_reference_default_has_a_reason(reference, ours):
    missing = [name for name in migration.differences(reference, ours()) if name not in migration.REASONS]
    assert not missing, f"reference defaults changed without a reason in llm_embedder/migration.py: {missing}"


def test_a_changed_default_without_a_reason_shows_up(monkeypatch):
    patched = dict(migration.REFERENCE_RUN_DENSE, learning_rate=1e-4)
    assert "learning_rate" in migration.differences(patched, migration.run_dense_defaults())
    assert "**no reason recorded**" in migration.defaults_table(patched, migration.run_dense_defaults())


def _documented_commands(text: str) -> list[list[str]]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip():
                commands.append(shlex.split(command))
    return commands


def _parse(argv: list[str]):
    """Parse a documented command with the parser of the tool it calls; True if it is one of ours."""
    from llm_embedder.retrieval.encode_cli import build_parser as encode
    from llm_embedder.retrieval.search_cli import build_parser as search
    from llm_embedder.training.run import build_parser as run_dense

    if "run_dense.py" in argv:
        rest = argv[argv.index("run_dense.py") + 1:]
        # --deepspeed and --fp16 configure devices when TrainingArguments is built (not possible on CPU):
        # check them as options of the parser, build everything else
        parser = run_dense()
        namespace, unknown = parser.parse_known_args(rest)
        assert not unknown
        return namespace
    if argv[:2] == ["llm-embedder", "encode"]:
        return encode().parse_args(argv[2:])
    if argv[:2] == ["llm-embedder", "search"]:
        return search().parse_args(argv[2:])
    if argv[:2] == ["llm-embedder", "convert"]:
        from llm_embedder.convert.tevatron import build_parser as tevatron

        if argv[2] == "tevatron":
            return tevatron().parse_args(argv[3:])
        return True
    return None


def test_every_documented_command_parses(repo_root):
    commands = _documented_commands((repo_root / "docs" / "migration.md").read_text())
    parsed = [c for c in commands if _parse(c) is not None]
    assert len(parsed) >= 7, parsed  # reference, Tevatron v1, v2 train/encode x2/search, Trove


def test_documented_run_dense_commands_build_their_arguments(repo_root, monkeypatch):
    from llm_embedder.training.run import parse_args

    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("LLM_EMBEDDER_DATA", str(repo_root / "data"))
    built = 0
    for argv in _documented_commands((repo_root / "docs" / "migration.md").read_text()):
        if "run_dense.py" not in argv:
            continue
        rest = argv[argv.index("run_dense.py") + 1:]
        skip = {"--deepspeed": 1, "--fp16": 0, "--bf16": 0}  # device settings: no GPU here
        kept, i = [], 0
        while i < len(rest):
            if rest[i] in skip:
                i += 1 + skip[rest[i]]
                continue
            kept.append(rest[i])
            i += 1
        model, data, training = parse_args(kept)
        assert model.model_name_or_path and training.output_dir
        built += 1
    assert built >= 4
