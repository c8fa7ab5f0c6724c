"""Task registry: the reference's instructions and recipes, precedence, --task_config, custom tasks."""
from __future__ import annotations

import dataclasses
import json

import pytest

from llm_embedder import tasks
from llm_embedder.errors import UserError
from llm_embedder.tasks import RECIPE_DEFAULTS, TaskRecipe, get_task, load_task_config, register_task, resolve_recipe

# FlagEmbedding research/llm_embedder/src/retrieval/data.py, TASK_CONFIG["llm-embedder"]["instruction"]
REFERENCE_INSTRUCTIONS = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "convsearch": ("Encode this query and context for searching relevant passages: ", "Encode this passage for retrieval: "),
    "chat": ("Embed this dialogue to find useful historical dialogues: ", "Embed this historical dialogue for retrieval: "),
    "lrlm": ("Embed this text chunk for finding useful historical chunks: ", "Embed this historical text chunk for retrieval: "),
    "icl": ("Convert this example into vector to look for useful examples: ", "Convert this example into vector for retrieval: "),
    "tool": ("Transform this user request for fetching helpful tool descriptions: ", "Transform this tool description for retrieval: "),
}

# the same file, TASK_CONFIG["llm-embedder"]["training"] (qa's contrastive_weight 0 is deliberately left to
# the command line here; see the comment above LLM_EMBEDDER_TASKS)
REFERENCE_TRAINING = {
    "qa": dict(select_positive="first", select_negative="random", stable_distill=True, teacher_scores_margin=None),
    "convsearch": dict(select_positive="first", select_negative="random", distill_weight=0, stable_distill=False),
    "chat": dict(select_positive="teacher", select_negative="random", distill_weight=1.0, contrastive_weight=0,
                 teacher_temperature=0.1, stable_distill=False),
    "lrlm": dict(select_positive="teacher", select_negative="random", max_sample_num=10000, teacher_scores_margin=0.1,
                 distill_weight=1.0, contrastive_weight=0, teacher_temperature=0.1, stable_distill=False),
    "icl": dict(select_positive="random", select_negative="random", contrastive_weight=0, stable_distill=True),
    "tool": dict(select_positive="first", select_negative="random", distill_weight=0, stable_distill=False),
}


@pytest.fixture
def registry(monkeypatch):
    """Isolate tests that register tasks or load --task_config files."""
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(tasks, "_OVERRIDES", {k: dict(v) for k, v in tasks._OVERRIDES.items()})
    return tasks


def test_six_instructions_are_the_reference_ones():
    assert tasks.task_instructions(REFERENCE_INSTRUCTIONS) == REFERENCE_INSTRUCTIONS
    assert set(tasks.LLM_EMBEDDER_TASKS) == set(REFERENCE_INSTRUCTIONS)


@pytest.mark.parametrize("task", sorted(REFERENCE_TRAINING))
def test_recipes_resolve_to_the_reference_training_config(task):
    resolved = resolve_recipe(task)
    for name, value in REFERENCE_TRAINING[task].items():
        assert getattr(resolved, name) == value, (task, name)


def test_qa_contrastive_weight_comes_from_the_command_line():
    assert resolve_recipe("qa", {"contrastive_weight": 0.3}).contrastive_weight == 0.3
    assert resolve_recipe("qa").contrastive_weight == RECIPE_DEFAULTS["contrastive_weight"]


def test_precedence_task_config_over_cli_over_recipe_over_default(registry, tmp_path):
    cli = {"teacher_temperature": 0.5, "select_negative": "top", "train_group_size": 4}
    chat = resolve_recipe("chat", cli)
    assert chat.teacher_temperature == 0.5 and chat.source("teacher_temperature") == "cli"  # typed: it wins
    assert chat.select_positive == "teacher" and chat.source("select_positive") == "recipe"
    assert chat.select_negative == "top" and chat.source("select_negative") == "cli"
    assert chat.student_temperature == 1.0 and chat.source("student_temperature") == "default"
    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"chat": {"teacher_temperature": 0.02, "train_group_size": 3}}))
    load_task_config(config)
    chat = resolve_recipe("chat", cli)
    assert chat.teacher_temperature == 0.02 and chat.source("teacher_temperature") == "task_config"
    assert chat.train_group_size == 3 and chat.source("train_group_size") == "task_config"
    assert chat.select_positive == "teacher"  # fields the file does not mention keep the recipe's value
    assert resolve_recipe("qa", cli).train_group_size == 4  # other tasks untouched


def test_cli_object_attributes_and_none_mean_not_given():
    @dataclasses.dataclass
    class Args:
        select_positive: str | None = None
        student_temperature: float = 2.0

    resolved = resolve_recipe("tool", Args())
    assert resolved.select_positive == "first" and resolved.source("select_positive") == "default"
    assert resolved.student_temperature == 2.0 and resolved.source("student_temperature") == "cli"


def test_recipe_defaults_match_the_command_line_defaults():
    from llm_embedder.training import arguments

    fields = {f.name: f.default for cls in (arguments.DataArguments, arguments.RetrievalTrainingArguments)
              for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    for name, value in RECIPE_DEFAULTS.items():
        if name in fields:
            assert fields[name] == value, name


def test_yaml_task_config_registers_a_custom_task(registry, tmp_path):
    config = tmp_path / "tasks.yaml"
    config.write_text("email:\n  query_instruction: 'Find the email: '\n  key_instruction: 'Email: '\n"
                      "  select_negative: top\n  stable_distill: true\nqa:\n  contrastive_weight: 0\n")
    assert load_task_config(config) == ["email", "qa"]
    assert "email" in tasks.known_tasks()
    email = resolve_recipe("email", {"select_negative": "random", "train_group_size": 5})
    assert (email.query_instruction, email.key_instruction) == ("Find the email: ", "Email: ")
    assert email.select_negative == "top" and email.stable_distill is True and email.train_group_size == 5
    assert resolve_recipe("qa").contrastive_weight == 0  # the reference's pure-distillation qa


def test_register_task_in_code(registry):
    register_task(TaskRecipe("legal", "Q: ", "D: ", train_group_size=2))
    assert resolve_recipe("legal").train_group_size == 2
    with pytest.raises(UserError, match="already registered"):
        register_task(TaskRecipe("legal"))
    register_task(TaskRecipe("legal", select_positive="random"), overwrite=True)
    assert resolve_recipe("legal").select_positive == "random"
    with pytest.raises(UserError, match="select_negative: must be one of random, top"):
        register_task(TaskRecipe("bad", select_negative="hardest"))


def test_unknown_task_names_the_known_ones():
    with pytest.raises(UserError, match=r"unknown task 'nope' \(known: chat, convsearch, icl, lrlm, qa, tool"):
        get_task("nope")


@pytest.mark.parametrize("content, suffix, message", [
    ('{"qa": {"temperature": 1}}', ".json", "qa: unknown recipe field 'temperature'"),
    ('{"qa": {"select_positive": "best"}}', ".json", "qa: select_positive: must be one of first, random, teacher"),
    ('{"qa": {"train_group_size": 0}}', ".json", "qa: train_group_size: must be an integer >= 1"),
    ('{"qa": {"teacher_temperature": 0}}', ".json", "qa: teacher_temperature: must be > 0"),
    ('{"qa": {"stable_distill": "yes"}}', ".json", "qa: stable_distill: must be true or false"),
    ('{"qa": 3}', ".json", "qa: must be a mapping of recipe fields"),
    ('[1, 2]', ".json", "must map task names to recipe fields"),
    ('{"qa": ', ".json", "cannot parse"),
    ("qa: [unclosed", ".yaml", "cannot parse"),
])
def test_bad_task_config_is_one_user_error(registry, tmp_path, content, suffix, message):
    path = tmp_path / f"tasks{suffix}"
    path.write_text(content)
    with pytest.raises(UserError, match="--task_config: .*" + message.replace("(", r"\(")) as err:
        load_task_config(path)
    assert "\n" not in str(err.value)


def test_bad_task_config_changes_nothing(registry, tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"qa": {"train_group_size": 3}, "chat": {"select_negative": "worst"}}))
    with pytest.raises(UserError):
        load_task_config(path)
    assert resolve_recipe("qa").train_group_size == RECIPE_DEFAULTS["train_group_size"]


def test_missing_task_config_file(tmp_path):
    with pytest.raises(UserError, match="--task_config: .*missing.json: file not found"):
        load_task_config(tmp_path / "missing.json")
