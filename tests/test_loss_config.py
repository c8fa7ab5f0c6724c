"""Loss settings travel one way: command line / --task_config / recipe -> resolved recipe -> the task's loss.

One test per recipe field: a value typed on the command line reaches the task's resolved recipe and, for
loss settings, the keyword arguments of the loss that runs, also when it equals the default and the task's
recipe says otherwise (``--stable_distill False`` for qa, ``--contrastive_weight 1`` for chat were once
silently overridden). Then: a loss registered in code, selected from a --task_config recipe, trains.
"""
from __future__ import annotations

import json

import pytest

from llm_embedder import tasks
from llm_embedder.errors import UserError
from llm_embedder.modeling.losses import LOSSES, RegisteredLoss
from llm_embedder.tasks import RESOLVED_FIELDS
from llm_embedder.training.model import task_losses
from llm_embedder.training.run import load_inputs, parse_args

TOY = "llm-embedder:llm_embedder_toy"


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    monkeypatch.setattr(tasks, "_OVERRIDES", {k: dict(v) for k, v in tasks._OVERRIDES.items()})


def resolve(tmp_path, task, *argv):
    """The resolved recipe and the built loss of ``task`` for a run_dense command line."""
    args = parse_args(["--train_data", f"{TOY}/{task}.json", "--output_dir", str(tmp_path / "out"),
                       "--model_name_or_path", str(tmp_path / "never_loaded"), "--train_group_size", "2", *argv])
    _, dataset, _, _ = load_inputs(*args)
    recipe = dataset.recipes[0]
    return recipe, task_losses([recipe])[task]


def term(loss, label):
    """``(registered name, weight, keyword arguments)`` of the term labelled ``label``."""
    return next((t.name, t.weight, kw) for t, _, kw in loss.terms if t.label == label)


# field -> (task whose recipe sets another value, the typed argv, what must hold). Values equal to the
# default where the recipe differs are the cases a "differs from the default" test would drop.
CASES = {
    "contrastive_weight": ("chat", ["--contrastive_weight", "1"], lambda r, l: term(l, "contrastive")[1] == 1.0),
    "distill_weight": ("tool", ["--distill_weight", "1"], lambda r, l: term(l, "distill")[1] == 1.0),
    "stable_distill": ("qa", ["--stable_distill", "False"], lambda r, l: term(l, "distill")[0] == "kl_distill"),
    "distill_loss": ("chat", ["--distill_loss", "margin_mse"], lambda r, l: term(l, "distill")[0] == "margin_mse"),
    "teacher_temperature": ("chat", ["--teacher_temperature", "1"],
                            lambda r, l: term(l, "distill")[2]["teacher_temperature"] == 1.0),
    "student_temperature": ("chat", ["--student_temperature", "2"],
                            lambda r, l: term(l, "distill")[2]["student_temperature"] == 2.0),
    "cos_temperature": ("qa", ["--cos_temperature", "0.05"],
                        lambda r, l: term(l, "contrastive")[2]["cos_temperature"] == term(l, "distill")[2]["cos_temperature"] == 0.05),
    "inbatch_negatives": ("qa", ["--inbatch_negatives", "False"],
                          lambda r, l: term(l, "contrastive")[2]["inbatch_negatives"] is False
                          and term(l, "distill")[2]["inbatch_negatives"] is False),
    "stable_distill_positive_first": ("qa", ["--stable_distill_positive_first", "False"],
                                      lambda r, l: term(l, "distill")[2]["positive_first"] is False),
    "train_group_size": ("qa", ["--train_group_size", "3"], lambda r, l: r.train_group_size == 3),
    "select_positive": ("icl", ["--select_positive", "first"], lambda r, l: r.select_positive == "first"),
    "select_negative": ("qa", ["--select_negative", "top"], lambda r, l: r.select_negative == "top"),
    "teacher_scores_margin": ("lrlm", ["--teacher_scores_margin", "0"], lambda r, l: r.teacher_scores_margin == 0),
    "teacher_scores_min": ("qa", ["--teacher_scores_min", "-100"], lambda r, l: r.teacher_scores_min == -100),
    "max_sample_num": ("lrlm", ["--max_sample_num", "3"], lambda r, l: r.max_sample_num == 3),
}


def test_every_recipe_field_has_a_precedence_case():
    assert set(CASES) == set(RESOLVED_FIELDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_typed_command_line_value_reaches_the_task_s_loss(tmp_path, name):
    task, argv, holds = CASES[name]
    before, before_loss = resolve(tmp_path, task)
    assert not holds(before, before_loss), "guard: without the flag the recipe's value is used"
    recipe, loss = resolve(tmp_path, task, *argv)
    assert recipe.source(name) == "cli" and holds(recipe, loss), (name, recipe)


def test_task_config_beats_the_command_line_for_its_task_only(tmp_path, registry):
    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"chat": {"teacher_temperature": 0.3}}))
    recipe, loss = resolve(tmp_path, "chat", "--teacher_temperature", "2", "--task_config", str(config))
    assert recipe.source("teacher_temperature") == "task_config" and term(loss, "distill")[2]["teacher_temperature"] == 0.3
    recipe, _ = resolve(tmp_path, "qa", "--teacher_temperature", "2", "--task_config", str(config))
    assert recipe.teacher_temperature == 2.0


def test_a_term_weight_flag_for_a_task_that_lists_its_terms_is_one_error(tmp_path, registry, capsys):
    from llm_embedder.training.run import main as run_dense

    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"qa": {"losses": [{"name": "infonce", "weight": 0.5}]}}))
    with pytest.raises(SystemExit) as exit_info:
        run_dense(["--train_data", f"{TOY}/qa.json", "--output_dir", str(tmp_path / "o"), "--task_config", str(config),
                   "--model_name_or_path", str(tmp_path / "never_loaded"), "--contrastive_weight", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 'qa': contrastive_weight is set (cli) but the task's recipe lists its loss terms" in err


def test_unknown_loss_or_param_in_task_config_fails_before_the_model_loads(tmp_path, registry):
    config = tmp_path / "tasks.json"
    config.write_text(json.dumps({"qa": {"losses": [{"name": "no_such_loss"}]}}))
    with pytest.raises(UserError, match="unknown loss 'no_such_loss'; known: .*infonce"):
        resolve(tmp_path, "qa", "--task_config", str(config))
    config.write_text(json.dumps({"qa": {"losses": [{"name": "infonce", "margin": 1}]}}))
    with pytest.raises(UserError, match="task 'qa': loss 'infonce' has no parameter 'margin'"):
        resolve(tmp_path, "qa", "--task_config", str(config))


def test_python_api_loss_arguments_that_miss_the_dataset_are_an_error(tmp_path, tiny_bert_nodrop_dir):
    from llm_embedder import DenseEncoder, EmbedderTrainer, RetrievalTrainingArguments, TrainDataset

    train = TrainDataset([f"{TOY}/chat.json"], train_group_size=2)
    args = RetrievalTrainingArguments(output_dir=str(tmp_path / "o"), contrastive_weight=0.5, use_cpu=True)
    encoder = DenseEncoder.from_pretrained(tiny_bert_nodrop_dir)
    with pytest.raises(UserError, match=r"--contrastive_weight 0.5: task 'chat' was resolved with contrastive_weight 0.0"):
        EmbedderTrainer(model=encoder, args=args, train_dataset=train)
    train = TrainDataset([f"{TOY}/chat.json"], train_group_size=2, contrastive_weight=0.5)
    trainer = EmbedderTrainer(model=encoder, args=args, train_dataset=train)
    assert trainer.model.loss_for("chat").terms[0][0].weight == 0.5


@pytest.mark.slow
def test_a_user_registered_loss_selected_in_task_config_trains(tmp_path, registry, monkeypatch, tiny_bert_nodrop_dir):
    """The recipe names the loss; nothing in the trainer knows it. Its params and the settings reach it, it is
    logged under its name, changes the weights, and the resolved recipe is saved with the run."""
    import torch
    from safetensors.torch import load_file

    from llm_embedder.modeling.losses.scoring import group_scores
    from llm_embedder.training.run import build_trainer

    calls = []

    def pairwise_hinge(q, k, group_size, *, cos_temperature=0.01, margin=0.0):
        """mean max(0, margin - (s_pos - s_neg)) over each query's negatives."""
        calls.append((cos_temperature, margin))
        scores = group_scores(q, k, group_size, cos_temperature)
        return torch.relu(margin - (scores[:, :1] - scores[:, 1:])).mean()

    monkeypatch.setitem(LOSSES, "pairwise_hinge", RegisteredLoss("pairwise_hinge", pairwise_hinge, needs_teacher=False))
    config = tmp_path / "tasks.yaml"
    config.write_text("tool:\n  losses:\n    - {name: pairwise_hinge, weight: 2.0, margin: 50.0}\n")
    out = tmp_path / "run"
    trainer = build_trainer(*parse_args(["--model_name_or_path", str(tiny_bert_nodrop_dir), "--output_dir", str(out), "--train_data",
               f"{TOY}/tool.json", "--task_config", str(config), "--train_group_size", "3", "--max_steps", "2",
               "--per_device_train_batch_size", "4", "--cos_temperature", "0.5", "--query_max_length", "32",
               "--key_max_length", "32", "--learning_rate", "1e-3", "--logging_steps", "1", "--use_cpu",
               "--disable_tqdm", "True"]))
    trainer.train()
    trainer.save_model(str(out))
    assert calls and set(calls) == {(0.5, 50.0)}
    recipes = json.loads(json.dumps(trainer.run_info["recipes"]))  # what run_dense writes to recipes.json
    assert recipes["tool"]["losses"] == [{"name": "pairwise_hinge", "weight": 2.0, "margin": 50.0}]
    assert recipes["tool"]["sources"]["losses"] == "task_config" and recipes["tool"]["sources"]["cos_temperature"] == "cli"
    logged = [e for e in trainer.state.log_history if "pairwise_hinge_tool" in e]
    assert len(logged) == 2 and all(e["pairwise_hinge_tool"] > 0 for e in logged)
    before, after = load_file(str(tiny_bert_nodrop_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[n], after[n]) for n in before), "the registered loss trained nothing"
