"""DenseEncoder: tokenisation, training vs inference paths, tied/untied, LoRA, and the saved directory
loading identically in sentence-transformers, transformers and DenseEncoder (a tiny random BERT for most
checks; the real MiniLM, marked slow, against sentence-transformers as an oracle)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_embedder.errors import UserError
from llm_embedder.modeling.encoder import DenseEncoder, sentence_transformers_prompts

TEXTS = [
    "short",
    "a considerably longer text about protein folding in yeast cells under heat stress",
    "medium length sentence here",
    "",
    "another one with several words in it",
]
INSTRUCTIONS = {"qa": ("Represent this query: ", "Represent this document: "),
                "tool": ("Find a tool for: ", "")}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: two intra-op threads spin against each other (a tiny-BERT
    forward measured 0.46 s with 2 threads under load vs 0.005 s with 1), so these tests use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path, **kwargs) -> DenseEncoder:
    torch.manual_seed(0)  # projections start random: make them reproducible
    return DenseEncoder.from_pretrained(path, **kwargs)


def one_by_one(enc: DenseEncoder, texts, side, instruction="") -> np.ndarray:
    """The straightforward reference: each text alone, no padding, no sorting."""
    enc.eval()
    with torch.no_grad():
        return np.stack([enc.embed(enc.tokenize([t], side, instruction), side)[0].numpy() for t in texts])


def sentence_transformer(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def saved_files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- tokenisation


def test_tokenize_prepends_instruction_and_truncates_per_side(tiny_bert_dir):
    enc = load(tiny_bert_dir, query_max_length=8, key_max_length=16)
    batch = enc.tokenize(["hello world"], "query", instruction="represent this: ")
    assert enc.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "represent this : hello world"
    long_text = " ".join(["word"] * 50)
    assert enc.tokenize([long_text], "query")["input_ids"].shape == (1, 8)
    assert enc.tokenize([long_text], "key")["input_ids"].shape == (1, 16)
    padded = enc.tokenize(["a", "a b c"], "key")
    assert padded["input_ids"].shape == (2, 5)  # dynamic padding to the longest: [CLS] a b c [SEP]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(TypeError, match="list of strings"):
        enc.tokenize("not a list", "query")
    with pytest.raises(ValueError, match="side must be"):
        enc.tokenize(["x"], "document")


# ---------------------------------------------------------------- training and inference paths


def test_embed_has_gradient_and_unit_norm(tiny_bert_dir):
    enc = load(tiny_bert_dir)
    emb = enc.embed(enc.tokenize(TEXTS, "key"), "key")
    assert emb.shape == (len(TEXTS), enc.embedding_dim) == (5, 32)
    assert emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    raw = load(tiny_bert_dir, normalize=False)
    assert not torch.allclose(raw.embed(raw.tokenize(TEXTS, "key"), "key").norm(dim=-1), torch.ones(5))


def test_embed_matches_manual_mean_pooling(tiny_bert_dir):
    """Independent path: the raw HF model's hidden states, averaged over real tokens by hand."""
    enc = load(tiny_bert_dir).eval()
    batch = enc.tokenize(TEXTS[:3], "key")
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
        expected = []
        for row in range(3):
            n = int(batch["attention_mask"][row].sum())
            expected.append(F.normalize(hidden[row, :n].mean(dim=0), dim=0))  # right padding: real tokens first
        torch.testing.assert_close(enc.embed(batch, "key"), torch.stack(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_encode_restores_order_and_matches_one_by_one(tiny_bert_dir, pooling):
    enc = load(tiny_bert_dir, pooling_method=pooling).train()
    out = enc.encode(TEXTS, side="query", instruction="q: ", batch_size=2, show_progress=False)
    assert out.dtype == np.float32 and out.shape == (5, 32)
    assert enc.training  # encode restores the mode it found
    np.testing.assert_allclose(out, one_by_one(enc, TEXTS, "query", "q: "), atol=1e-5, rtol=0)
    assert enc.encode([], show_progress=False).shape == (0, 32)


def test_forward_returns_both_sides(tiny_bert_dir):
    enc = load(tiny_bert_dir)
    out = enc(query_inputs=enc.tokenize(TEXTS[:2], "query"), key_inputs=enc.tokenize(TEXTS, "key"))
    assert out["query"].shape == (2, 32) and out["key"].shape == (5, 32)
    assert enc(key_inputs=enc.tokenize(TEXTS, "key"))["query"] is None


def test_gradient_checkpointing_gives_the_same_gradients(tiny_bert_dir):
    def grads(checkpointing):
        enc = load(tiny_bert_dir)
        enc.model.config.hidden_dropout_prob = enc.model.config.attention_probs_dropout_prob = 0.0
        enc.eval()  # no dropout: both runs are deterministic
        if checkpointing:
            enc.gradient_checkpointing_enable()
            assert enc.model.is_gradient_checkpointing
        enc.embed(enc.tokenize(TEXTS, "key"), "key").sum().backward()
        return [p.grad.clone() for p in enc.parameters() if p.grad is not None]

    for plain, checkpointed in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_projection(tiny_bert_dir):
    enc = load(tiny_bert_dir, projection_out_dim=8)  # an output size implies --add_pooler
    assert enc.projection is not None and enc.embedding_dim == 8 and enc.hidden_size == 32
    assert enc.encode(TEXTS, show_progress=False).shape == (5, 8)
    same_width = load(tiny_bert_dir, add_pooler=True)
    assert same_width.embedding_dim == 32 and same_width.projection is not None
    with pytest.raises(UserError, match="^--projection_out_dim: needs --add_pooler"):
        load(tiny_bert_dir, add_pooler=False, projection_out_dim=8)


# ---------------------------------------------------------------- saved directory


def assert_st_matches(enc, path, instruction_pairs=(("", ""),), prompt_names=((None, None),), batch_size=2):
    st = sentence_transformer(path)
    for (q_instr, k_instr), (q_prompt, k_prompt) in zip(instruction_pairs, prompt_names, strict=True):
        ours_q = enc.encode(TEXTS, side="query", instruction=q_instr, batch_size=batch_size, show_progress=False)
        ours_k = enc.encode(TEXTS, side="key", instruction=k_instr, batch_size=batch_size, show_progress=False)
        theirs_q = st.encode(TEXTS, prompt_name=q_prompt, convert_to_numpy=True)
        theirs_k = st.encode(TEXTS, prompt_name=k_prompt, convert_to_numpy=True)
        np.testing.assert_allclose(ours_q, theirs_q, atol=1e-5, rtol=0)
        np.testing.assert_allclose(ours_k, theirs_k, atol=1e-5, rtol=0)
    return st


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_saved_dir_loads_in_sentence_transformers(tiny_bert_dir, tmp_path, pooling):
    enc = load(tiny_bert_dir, pooling_method=pooling, query_max_length=16, key_max_length=32)
    batch_size = 2
    if pooling == "last":
        # the decoder-model setup, saved with the tokenizer and used by ST. BERT's absolute positions shift
        # with left padding, so compare one whole batch (same padding) rather than ST's batches vs ours.
        enc.tokenizer.padding_side = "left"
        batch_size = len(TEXTS)
    out = enc.save_pretrained(tmp_path / "model")
    st = assert_st_matches(enc, out, batch_size=batch_size)
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == enc.tokenizer.padding_side
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert st.max_seq_length == 32 and st.similarity_fn_name == "cosine"
    assert not [f for f in saved_files(out) if f.endswith((".bin", ".pt", ".pkl", ".pth"))]


def test_saved_prompts_reproduce_instructions(tiny_bert_dir, tmp_path):
    enc = load(tiny_bert_dir)
    out = enc.save_pretrained(tmp_path / "model", instructions=INSTRUCTIONS)
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == {"query": "Represent this query: ", "document": "Represent this document: ",
                                 "qa_query": "Represent this query: ", "qa_key": "Represent this document: ",
                                 "tool_query": "Find a tool for: "}  # empty instructions mean no prompt
    st = assert_st_matches(enc, out, instruction_pairs=[INSTRUCTIONS["qa"], INSTRUCTIONS["qa"], INSTRUCTIONS["tool"]],
                           prompt_names=[("query", "document"), ("qa_query", "qa_key"), ("tool_query", None)])
    np.testing.assert_allclose(st.encode_query(TEXTS), enc.encode(TEXTS, "query", "Represent this query: ",
                                                                  show_progress=False), atol=1e-5, rtol=0)
    single = sentence_transformers_prompts({"qa": INSTRUCTIONS["qa"]})
    assert single == {"query": "Represent this query: ", "document": "Represent this document: "}


def test_saved_projection_and_dot_similarity(tiny_bert_dir, tmp_path):
    enc = load(tiny_bert_dir, projection_out_dim=8, normalize=False)
    out = enc.save_pretrained(tmp_path / "model")
    st = assert_st_matches(enc, out)
    assert [m["path"] for m in json.loads((out / "modules.json").read_text())] == ["", "1_Pooling", "2_Dense"]
    assert st.similarity_fn_name == "dot" and st.encode(["x"]).shape[1] == 8


def test_saved_dir_loads_in_transformers(tiny_bert_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    enc = load(tiny_bert_dir)
    out = enc.save_pretrained(tmp_path / "model")
    model = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    np.testing.assert_allclose(enc.encode(TEXTS, show_progress=False), expected.numpy(), atol=1e-5, rtol=0)


def test_round_trip_restores_settings_and_embeddings(tiny_bert_dir, tmp_path):
    enc = load(tiny_bert_dir, pooling_method="cls", normalize=False, query_max_length=24, key_max_length=40,
               projection_out_dim=12)
    out = enc.save_pretrained(tmp_path / "model", instructions=INSTRUCTIONS)
    again = DenseEncoder.from_pretrained(out)
    assert again.settings() == enc.settings() == {
        "pooling_method": "cls", "normalize": False, "query_max_length": 24, "key_max_length": 40,
        "tie_encoders": True, "add_pooler": True, "projection_out_dim": 12}
    assert again.instructions == INSTRUCTIONS
    np.testing.assert_allclose(again.encode(TEXTS, show_progress=False), enc.encode(TEXTS, show_progress=False),
                               atol=1e-6, rtol=0)
    # an explicit argument wins over the saved value; a new projection size starts a new projection
    assert DenseEncoder.from_pretrained(out, pooling_method="mean").pooling_method == "mean"
    assert DenseEncoder.from_pretrained(out, add_pooler=False).projection is None
    # re-saving without instructions keeps the loaded ones
    again.save_pretrained(tmp_path / "copy")
    assert DenseEncoder.from_pretrained(tmp_path / "copy").instructions == INSTRUCTIONS


def test_sentence_transformers_dir_settings_are_read(tiny_bert_dir, tmp_path):
    """A plain ST directory (no llm_embedder.json) gives its pooling and normalisation."""
    enc = load(tiny_bert_dir, pooling_method="cls", normalize=False)
    out = enc.save_pretrained(tmp_path / "model")
    (out / "llm_embedder.json").unlink()
    again = DenseEncoder.from_pretrained(out)  # the classic layout we write
    assert (again.pooling_method, again.normalize) == ("cls", False)
    sentence_transformer(out).save(str(tmp_path / "resaved"))  # the layout sentence-transformers itself writes
    resaved = DenseEncoder.from_pretrained(tmp_path / "resaved")
    assert (resaved.pooling_method, resaved.normalize) == ("cls", False)
    np.testing.assert_allclose(resaved.encode(TEXTS, show_progress=False), enc.encode(TEXTS, show_progress=False),
                               atol=1e-6, rtol=0)


def test_save_into_existing_dir_keeps_foreign_files_and_drops_stale_ones(tiny_bert_dir, tmp_path):
    out = tmp_path / "checkpoint"
    load(tiny_bert_dir, tie_encoders=False, projection_out_dim=8).save_pretrained(out)
    (out / "trainer_state.json").write_text("{}")
    assert (out / "key_encoder").is_dir() and (out / "2_Dense").is_dir()
    load(tiny_bert_dir).save_pretrained(out)
    assert (out / "trainer_state.json").exists()
    assert not (out / "key_encoder").exists() and not (out / "2_Dense").exists()
    assert not list(tmp_path.glob(".checkpoint.*"))  # no staging directory left behind
    assert DenseEncoder.from_pretrained(out).settings()["tie_encoders"] is True
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        load(tiny_bert_dir).save_pretrained(tmp_path / "file")


# ---------------------------------------------------------------- untied encoders


def test_untied_encoders_diverge_after_a_step_on_one_side(tiny_bert_dir, tmp_path):
    enc = load(tiny_bert_dir, tie_encoders=False)
    assert not enc.tie_encoders and enc.key_model is not enc.model
    before = enc.encode(TEXTS, "key", show_progress=False)
    np.testing.assert_allclose(enc.encode(TEXTS, "query", show_progress=False), before, atol=1e-6)  # deep copy
    optimizer = torch.optim.SGD(enc.parameters(), lr=1.0)
    enc.embed(enc.tokenize(TEXTS, "query"), "query")[:, 0].sum().backward()
    assert all(p.grad is None for p in enc.key_model.parameters())
    optimizer.step()
    np.testing.assert_array_equal(enc.encode(TEXTS, "key", show_progress=False), before)
    assert np.abs(enc.encode(TEXTS, "query", show_progress=False) - before).max() > 1e-3

    out = enc.save_pretrained(tmp_path / "model")
    again = DenseEncoder.from_pretrained(out)
    assert not again.tie_encoders
    for side in ("query", "key"):
        np.testing.assert_allclose(again.encode(TEXTS, side, show_progress=False),
                                   enc.encode(TEXTS, side, show_progress=False), atol=1e-6, rtol=0)
    key_st = sentence_transformer(out / "key_encoder")
    np.testing.assert_allclose(key_st.encode(TEXTS), before, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="^--tie_encoders: .* cannot be tied"):
        DenseEncoder.from_pretrained(out, tie_encoders=True)


# ---------------------------------------------------------------- LoRA


def test_lora_trains_adapters_only_and_merges_on_save(tiny_bert_dir, tmp_path):
    enc = load(tiny_bert_dir, lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert enc.lora["target_modules"] == ["query", "value"]
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0): give it weights so merging matters
        for name, param in enc.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    adapted = enc.encode(TEXTS, show_progress=False)
    base = DenseEncoder.from_pretrained(tiny_bert_dir).encode(TEXTS, show_progress=False)
    assert np.abs(adapted - base).max() > 1e-3

    out = enc.save_pretrained(tmp_path / "model")
    assert (out / "lora_adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "llm_embedder.json").read_text())["lora"]["merged"] is True
    np.testing.assert_allclose(DenseEncoder.from_pretrained(out).encode(TEXTS, show_progress=False), adapted,
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose(sentence_transformer(out).encode(TEXTS), adapted, atol=1e-5, rtol=0)
    assert enc.lora is not None and any("lora_B" in n for n, _ in enc.named_parameters())  # saving left it wrapped


def test_lora_with_projection_and_untied(tiny_bert_dir):
    enc = load(tiny_bert_dir, lora_rank=2, tie_encoders=False, projection_out_dim=8)
    trainable = {n.split(".")[0] for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"model", "key_model", "projection", "key_projection"}
    frozen = [n for n, p in enc.named_parameters() if not p.requires_grad]
    assert frozen and not any("lora_" in n or "projection" in n for n in frozen)
    with pytest.raises(UserError, match="^--lora_target_modules:"):
        load(tiny_bert_dir, lora_rank=2, lora_target_modules=["no_such_module"])


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize("kwargs, message", [
    ({"pooling_method": "max"}, "^--pooling_method: expected one of"),
    ({"query_max_length": 0}, "^--query_max_length: expected a positive integer"),
    ({"key_max_length": 4096}, "^--key_max_length: 4096 exceeds the model's 512 positions"),
    ({"lora_rank": -1}, "^--lora_rank: expected an integer >= 0"),
    ({"lora_rank": 2, "lora_dropout": 1.5}, "^--lora_dropout:"),
    ({"lora_rank": 2, "lora_alpha": 0}, "^--lora_alpha: expected a positive number"),
    ({"torch_dtype": "float64x"}, "^--torch_dtype: unknown dtype"),
    ({"normalize": "yes"}, "^--normalize: expected true or false"),
])
def test_bad_arguments_raise_one_line_user_errors(tiny_bert_dir, kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        DenseEncoder.from_pretrained(tiny_bert_dir, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_model_path_and_settings_file(tiny_bert_dir, tmp_path):
    with pytest.raises(UserError, match="^--model_name_or_path: 'no/such/dir' is neither"):
        DenseEncoder.from_pretrained("no/such/dir")
    out = load(tiny_bert_dir).save_pretrained(tmp_path / "model")
    settings = json.loads((out / "llm_embedder.json").read_text())
    (out / "llm_embedder.json").write_text(json.dumps({**settings, "pooling_method": "median"}))
    with pytest.raises(UserError, match=r"llm_embedder\.json: pooling_method: expected one of"):
        DenseEncoder.from_pretrained(out)
    (out / "llm_embedder.json").write_text("{not json")
    with pytest.raises(UserError, match=r"llm_embedder\.json: cannot read JSON"):
        DenseEncoder.from_pretrained(out)


def test_torch_dtype(tiny_bert_dir):
    enc = load(tiny_bert_dir, torch_dtype="bfloat16", projection_out_dim=8)
    assert next(enc.model.parameters()).dtype == torch.bfloat16 and enc.projection.weight.dtype == torch.bfloat16
    out = enc.encode(TEXTS[:2], show_progress=False)
    assert out.dtype == np.float32 and out.shape == (2, 8)


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm_dir, tmp_path):
    """Base MiniLM through DenseEncoder equals SentenceTransformer(minilm_dir) (mean + normalise)."""
    enc = DenseEncoder.from_pretrained("minilm")
    assert enc.settings()["pooling_method"] == "mean" and enc.normalize
    st = sentence_transformer(minilm_dir)
    np.testing.assert_allclose(enc.encode(TEXTS, batch_size=2, show_progress=False),
                               st.encode(TEXTS, normalize_embeddings=True), atol=1e-5, rtol=0)
    instruction = INSTRUCTIONS["qa"][0]
    np.testing.assert_allclose(enc.encode(TEXTS, "query", instruction, show_progress=False),
                               st.encode(TEXTS, prompt=instruction, normalize_embeddings=True), atol=1e-5, rtol=0)
    out = enc.save_pretrained(tmp_path / "minilm", instructions={"qa": INSTRUCTIONS["qa"]})
    np.testing.assert_allclose(sentence_transformer(out).encode_query(TEXTS),
                               enc.encode(TEXTS, "query", instruction, show_progress=False), atol=1e-5, rtol=0)


def test_one_set_of_encoder_defaults_for_python_and_the_command_line():
    """LoRA dropout was 0.1 in DenseEncoder.from_pretrained and 0.0 on the command line: one table now."""
    import dataclasses
    import inspect

    from llm_embedder.modeling.encoder_settings import DEFAULTS, EncoderSettings
    from llm_embedder.training.arguments import ModelArguments

    defaults = EncoderSettings()
    signature = inspect.signature(DenseEncoder.from_pretrained).parameters
    cli = {f.name: f.default for f in dataclasses.fields(ModelArguments)}
    for name in ("lora_rank", "lora_alpha", "lora_dropout"):
        assert signature[name].default == getattr(defaults, name) == cli[name], name
    assert DEFAULTS == {"pooling_method": "mean", "normalize": True, "query_max_length": 256, "key_max_length": 256,
                        "tie_encoders": True, "add_pooler": False, "projection_out_dim": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.lora_dropout = 0.5
