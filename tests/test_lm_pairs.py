"""From records to scoring pairs: templates per task, exact answer tokens, truncation, input errors."""
from __future__ import annotations

import pytest

from llm_embedder.corpus import Corpus
from llm_embedder.errors import UserError
from llm_embedder.lm.pairs import build_plan, plan_rows
from llm_embedder.lm.scorer import collate
from llm_embedder.lm.templates import LMTemplate, get_template, register_template, template_for_task
from llm_embedder.schema import RecordFile, read_records, validate_record
from test_lm_fixtures import QA_ROWS, one_torch_thread, smollm2_tokenizer, write_jsonl  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def records(tmp_path, rows, name="rows.json") -> RecordFile:
    return read_records(write_jsonl(tmp_path / name, rows), purpose="score")


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------- templates

@pytest.mark.parametrize("task, name", [("qa", "qa"), ("convsearch", "qa"), ("icl", "icl"), ("chat", "chat"),
                                        ("lrlm", "lrlm"), ("tool", "tool")])
def test_auto_template_follows_the_task_recipe(task, name):
    assert template_for_task(task).name == name


def test_each_template_renders_the_documented_prompt_and_target():
    key, query = "KEY", "QUERY"
    expected = {
        "qa": ("Knowledge: KEY\nQuestion: QUERY\nAnswer:", " ANS"),
        "icl": ("KEY\n\nQUERY\n", "ANS"),
        "chat": ("KEY\nSpeaker 1: QUERY\nSpeaker 2:", " ANS"),
        "lrlm": ("KEY\n\nCTX QUERY", " ANS"),
        "tool": ("Tool: KEY\nUser request: QUERY\nTool call:", " ANS"),
        "query_likelihood": ("Passage: KEY\nPlease write a question/claim based on this passage.\n", "QUERY"),
    }
    for name, (prompt, target) in expected.items():
        t = get_template(name)
        assert t.render_prompt(key=key, query=query, context="CTX ") == prompt
        assert t.render_target(query=query, answer="ANS") == target
        assert t.uses_answers == (name != "query_likelihood")


def test_template_registry_rejects_bad_templates():
    with pytest.raises(UserError, match="unknown field 'passage'"):
        register_template(LMTemplate("bad1", "{passage} {query}", " {answer}", ""))
    with pytest.raises(UserError, match="must contain \\{key\\}"):
        register_template(LMTemplate("bad2", "{query}", " {answer}", ""))
    with pytest.raises(UserError, match="already registered"):
        register_template(LMTemplate("qa", "{key}", "{answer}", ""))
    with pytest.raises(UserError, match="--template: unknown template 'nope'"):
        get_template("nope")


def test_toy_files_pick_their_templates(toy_dir):
    for task, template in [("qa", "qa"), ("convsearch", "qa"), ("chat", "chat"), ("lrlm", "lrlm")]:
        rows, plans = plan_rows(read_records(toy_dir / f"{task}.json", purpose="score"), max_queries=2)
        assert [p.template.name for p in plans] == [template, template]
    _, (chat, _) = plan_rows(read_records(toy_dir / "chat.json", purpose="score"), max_queries=2)
    assert chat.key_fields == "history" and len(chat.keys) == 7
    _, (lrlm, _) = plan_rows(read_records(toy_dir / "lrlm.json", purpose="score"), max_queries=2)
    assert len(lrlm.keys) == 64  # empty pos: the keys are the negatives


def test_toy_files_without_answers_need_query_likelihood(toy_dir):
    for task in ("icl", "tool"):
        rf = read_records(toy_dir / f"{task}.json", purpose="score")
        with pytest.raises(UserError) as err:
            plan_rows(rf)
        assert str(err.value).splitlines()[0].startswith(f"{rf.path}:1: answers: missing or empty")
        assert len(str(err.value).splitlines()) == 8  # every bad row, each on its own line
        _, plans = plan_rows(rf, template="query_likelihood")
        assert plans[0].targets == [rf.records[0]["query"]]


# ------------------------------------------------------------------------------------- exact token masks

def test_target_tokens_are_exactly_the_answer_tokens(tmp_path, tok):
    plan = build_plan(records(tmp_path, QA_ROWS), tok)
    first = QA_ROWS[0]
    assert len(plan.pairs) == 4 * 2 + 3 * 1 + 2 * 1  # keys x answers
    pair = plan.pairs[0]
    assert (pair.row, pair.key, pair.answer) == (0, 0, 0)
    assert pair.prompt_ids == ids(tok, f"Knowledge: {first['pos'][0]}\nQuestion: {first['query']}\nAnswer:")
    assert pair.target_ids == ids(tok, " Paris")
    assert tok.bos_token_id not in pair.prompt_ids + pair.target_ids  # no <|im_start|> prepended anywhere
    assert plan.pairs[1].target_ids == ids(tok, " The capital is Paris.")
    batch = collate([(p.prompt_ids, p.target_ids) for p in plan.pairs], pad_id=0)
    assert batch.sizes == [len(ids(tok, " " + QA_ROWS[p.row]["answers"][p.answer])) for p in plan.pairs]
    assert batch.labels.tolist() == [t for p in plan.pairs for t in p.target_ids]
    assert plan.stats["target_tokens"] == sum(batch.sizes)


def test_a_prompt_too_long_for_a_key_loses_the_key_s_end_and_keeps_the_question(tmp_path, tok):
    row = {"query": "Who wrote it?", "answers": ["William Shakespeare wrote the play Hamlet around 1600."], "task": "qa",
           "pos": ["word " * 200]}
    full = build_plan(records(tmp_path, [row]), tok, max_length=1024).pairs[0]
    plan = build_plan(records(tmp_path, [row]), tok, max_length=40)
    cut = plan.pairs[0]
    assert cut.target_ids == full.target_ids  # the answer is scored whole
    assert 30 <= cut.length <= 40
    text = tok.decode(cut.prompt_ids)
    assert text.startswith("Knowledge: word word") and text.endswith("\nQuestion: Who wrote it?\nAnswer:")
    assert plan.stats["prompts_cut_key"] == 1 and plan.stats["prompts_cut_from_left"] == 0
    batch = collate([(cut.prompt_ids, cut.target_ids)], pad_id=0)
    assert batch.sizes == [len(full.target_ids)]


def test_a_long_lrlm_context_is_cut_from_its_left_and_the_key_is_kept(tmp_path, tok, caplog):
    """The lrlm prompt is key, context, query: cutting the prompt's left end would drop the key first and
    make every key's score the same. The oldest context goes instead, and the cut is counted and logged."""
    context = " ".join(f"c{i}" for i in range(300)) + " "
    rows = [{"query": "the current chunk", "answers": ["the next words"], "task": "lrlm", "context": context,
             "pos": ["RETRIEVED KEY ONE"], "neg": ["RETRIEVED KEY TWO"]}]
    with caplog.at_level("WARNING"):
        plan = build_plan(records(tmp_path, rows), tok, max_length=64)
    assert plan.stats["prompts_cut_context"] == 2 and plan.stats["prompts_cut_key"] == 0
    assert "2 lost the left end of their context" in caplog.text
    one, two = (tok.decode(p.prompt_ids) for p in plan.pairs)
    assert one.startswith("RETRIEVED KEY ONE\n\n") and two.startswith("RETRIEVED KEY TWO\n\n")
    assert one.endswith(" c299 the current chunk") and "c0 " not in one  # the newest context stays
    assert all(p.length <= 64 for p in plan.pairs) and plan.pairs[0].prompt_ids != plan.pairs[1].prompt_ids


def test_a_query_too_long_for_any_prompt_is_cut_from_the_left_and_counted(tmp_path, tok):
    rows = [{"query": "q " * 100, "answers": ["a"], "task": "qa", "pos": ["k"]}]
    plan = build_plan(records(tmp_path, rows), tok, max_length=20)
    assert plan.pairs[0].length == 20 and plan.stats["prompts_cut_from_left"] == 1


def sentencepiece_tokenizer():
    """A Llama-style SentencePiece tokenizer built offline: Unigram pieces, "▁" for spaces with a prefix "▁"
    (Llama-2's tokenizer.json normaliser) and a BOS ``<s>`` before every text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = ["Knowledge: the capital of France is Paris.", "Question: what is the capital of France?",
                 "Answer: it is Paris, a large city.", "The Eiffel Tower was built in 1889 in Paris."] * 20
    sp = Tokenizer(models.Unigram())
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    sp.train_from_iterator(sentences, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"],
                                                              unk_token="<unk>", max_piece_length=6))
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_pairs_are_the_whole_text_s_tokens_with_bos(tmp_path):
    """Separately tokenised, " Paris" is "▁", "▁", "Paris" under SentencePiece: a stray piece would be scored.
    The pair must be exactly the tokens of the whole text as the model reads it, BOS first."""
    sp = sentencepiece_tokenizer()
    assert sp(" Paris", add_special_tokens=False).input_ids != sp("Paris", add_special_tokens=False).input_ids[-1:]
    row = {"query": "what is the capital of France?", "answers": ["Paris"], "task": "qa", "pos": ["Paris is big."]}
    plan = build_plan(records(tmp_path, [row]), sp)
    pair = plan.pairs[0]
    prompt = "Knowledge: Paris is big.\nQuestion: what is the capital of France?\nAnswer:"
    assert pair.prompt_ids + pair.target_ids == sp(prompt + " Paris").input_ids
    assert pair.prompt_ids[0] == sp.bos_token_id and plan.stats["special_prefix_ids"] == [sp.bos_token_id]
    assert sp.decode(pair.target_ids).strip() == "Paris"
    assert "▁" not in sp.convert_ids_to_tokens(pair.target_ids)  # no stray piece is scored


def test_keys_are_cut_to_key_max_length_tokens(tmp_path, tok):
    key = "alpha beta gamma delta epsilon zeta eta theta"
    row = {"query": "q?", "answers": ["a"], "task": "qa", "pos": [key]}
    plan = build_plan(records(tmp_path, [row]), tok, key_max_length=3)
    assert plan.stats["distinct_keys_cut_to_key_max_length"] == 1
    cut = tok.decode(ids(tok, key)[:3])
    assert plan.pairs[0].prompt_ids == ids(tok, f"Knowledge: {cut}\nQuestion: q?\nAnswer:")


def test_corpus_indices_resolve_to_key_texts(tmp_path, tok):
    corpus = Corpus.from_texts(["doc zero", "doc one", "doc two"])
    row = {"query": "q?", "answers": ["a"], "task": "qa", "pos_index": [2], "neg_index": [0, 1]}
    plan = build_plan(records(tmp_path, [row]), tok, corpus=corpus)
    assert plan.row_plans[0].keys == ["doc two", "doc zero", "doc one"]


def test_max_keys_truncates_keys_and_aligned_fields_together(tmp_path, tok):
    row = {"query": "q?", "answers": ["a"], "task": "qa", "pos": ["p0", "p1"], "pos_index": [5, 6],
           "neg": ["n0", "n1", "n2"], "neg_index": [7, 8, 9], "neg_score": [0.1, 0.2, 0.3], "teacher_scores": [1, 2, 3, 4, 5]}
    plan = build_plan(records(tmp_path, [row]), tok, max_keys=3)
    out = plan.rows[0]
    assert plan.row_plans[0].keys == ["p0", "p1", "n0"]
    assert (out["pos"], out["pos_index"], out["neg"], out["neg_index"], out["neg_score"]) == (
        ["p0", "p1"], [5, 6], ["n0"], [7], [0.1])
    assert row["neg"] == ["n0", "n1", "n2"]  # the input record is not modified
    assert plan.row_plans[0].truncated_fields == {"neg": 1, "neg_index": 1, "neg_score": 1}  # pos was kept whole


def test_max_pos_leaves_the_key_budget_to_negatives(tmp_path, tok):
    """A row with four positives and --max_keys 4 scored no negative (distillation then refused the row);
    --max_pos 1 keeps the first positive and gives the other three keys to negatives."""
    row = {"query": "q?", "task": "qa", "answers": ["a"], "pos": ["p0", "p1", "p2", "p3"], "pos_index": [0, 1, 2, 3],
           "neg": ["n0", "n1", "n2", "n3"], "neg_index": [4, 5, 6, 7]}
    without = build_plan(records(tmp_path, [row]), tok, max_keys=4)
    assert without.row_plans[0].keys == ["p0", "p1", "p2", "p3"]             # the failure mode: no negative left
    plan = build_plan(records(tmp_path, [row]), tok, max_keys=4, max_pos=1)
    out = plan.rows[0]
    assert plan.row_plans[0].keys == ["p0", "n0", "n1", "n2"]
    assert (out["pos"], out["pos_index"], out["neg"], out["neg_index"]) == (["p0"], [0], ["n0", "n1", "n2"], [4, 5, 6])
    assert plan.row_plans[0].truncated_fields == {"pos": 1, "pos_index": 1, "neg": 3, "neg_index": 3}
    one = {**row, "pos": ["p0"], "pos_index": [0]}                             # a row within --max_pos: untouched
    assert build_plan(records(tmp_path, [one]), tok, max_pos=1).row_plans[0].truncated_fields == {}


def test_max_keys_keeps_original_ids_in_step_and_the_row_valid(tmp_path, tok):
    """Mined SciFact rows carry pos_ids/neg_ids; cutting neg_index without them made run_dense refuse the file."""
    corpus = Corpus.from_texts([f"doc {i}" for i in range(8)], ids=[f"d{i}" for i in range(8)])
    row = {"query": "q?", "task": "qa", "pos_index": [1, 2], "pos_ids": ["d1", "d2"],
           "neg_index": [3, 4, 5, 6, 7], "neg_ids": ["d3", "d4", "d5", "d6", "d7"]}
    plan = build_plan(records(tmp_path, [row]), tok, template="query_likelihood", corpus=corpus, max_keys=6)
    out = plan.rows[0]
    assert (out["pos_ids"], out["neg_index"], out["neg_ids"]) == (["d1", "d2"], [3, 4, 5, 6], ["d3", "d4", "d5", "d6"])
    assert validate_record({**out, "teacher_scores": [0.0] * 6}, purpose="train", corpus_ids=corpus.ids) == []


def test_max_queries_keeps_the_first_rows(tmp_path, tok):
    plan = build_plan(records(tmp_path, QA_ROWS), tok, max_queries=2)
    assert [r["query_id"] for r in plan.rows] == ["q1", "q2"]


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad, message", [
    ({"query": "q?", "task": "qa", "pos": ["k"]}, "answers: missing or empty"),
    ({"query": "q?", "task": "qa", "pos": ["k"], "answers": []}, "answers: missing or empty"),
    ({"query": "q?", "task": "qa", "pos": ["k"], "answers": ["  "]}, "answers: contains an empty answer"),
    ({"query": "q?", "pos": ["k"], "answers": ["a"]}, "task: missing; --template auto"),
    ({"query": "q?", "task": "nope", "pos": ["k"], "answers": ["a"]}, "unknown task 'nope'"),
    ({"query": "q?", "task": "qa", "pos_index": [0], "answers": ["a"]}, "no --corpus was passed"),
])
def test_bad_rows_are_reported_with_their_line_before_scoring(tmp_path, tok, bad, message):
    rf = records(tmp_path, [QA_ROWS[0], bad])
    with pytest.raises(UserError) as err:
        build_plan(rf, tok)
    assert str(err.value) == str(err.value).splitlines()[0]  # one line
    assert str(err.value).startswith(f"{rf.path}:2: ")
    assert message in str(err.value)


@pytest.mark.parametrize("bad, message", [
    ({"query": "", "task": "qa", "pos": ["k"], "answers": ["a"]}, "query: empty"),
    ({"query": "q?", "task": "qa", "answers": ["a"]}, "nothing to score"),
    ({"query": "q?", "task": "qa", "pos_index": [7], "answers": ["a"]}, "beyond the corpus"),
])
def test_schema_problems_name_the_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "rows.json", [QA_ROWS[0], bad])
    with pytest.raises(UserError) as err:
        read_records(path, purpose="score", corpus_size=3)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_answer_longer_than_max_length_is_an_error(tmp_path, tok):
    row = {"query": "q?", "task": "qa", "pos": ["k"], "answers": ["one two three four five six seven eight"]}
    rf = records(tmp_path, [row])
    with pytest.raises(UserError, match=r"rows.json:1: answers: answer 0 has \d+ tokens; --max_length 5"):
        build_plan(rf, tok, max_length=5)
