"""--append_eos_token / append_eos: every query and key ends with EOS, so last-token pooling reads it (tiny GPT-2)."""
from __future__ import annotations

import pytest
import torch

WORDS = "the moon orbits earth paris is capital of france cats purr violins have four strings".split()


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A random 2-layer GPT-2 with a word-level tokenizer, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=2, n_head=2,
                                 eos_token_id=1, bos_token_id=1))
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_tokenize_ends_every_row_with_eos_within_max_length(tiny_decoder):
    from llm_embedder.modeling.encoder import DenseEncoder

    enc = DenseEncoder.from_pretrained(tiny_decoder, pooling_method="last", append_eos=True, query_max_length=4)
    batch = enc.tokenize(["the moon orbits earth paris", "cats purr"], side="query")
    eos = enc.tokenizer.eos_token_id
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real position
    assert batch["input_ids"].shape[1] == 4
    assert batch["input_ids"][torch.arange(2), last].tolist() == [eos, eos]
    plain = DenseEncoder.from_pretrained(tiny_decoder, pooling_method="last", query_max_length=4)
    plain_batch = plain.tokenize(["the moon orbits earth paris", "cats purr"], side="query")
    plain_last = plain_batch["attention_mask"].sum(dim=1) - 1
    assert eos not in plain_batch["input_ids"][torch.arange(2), plain_last].tolist()  # guard: EOS comes from the flag


def test_embeddings_are_the_eos_state_in_training_and_encode_paths_and_the_setting_is_saved(tiny_decoder, tmp_path):
    from llm_embedder.modeling.encoder import DenseEncoder

    enc = DenseEncoder.from_pretrained(tiny_decoder, pooling_method="last", append_eos=True, normalize=False)
    texts = ["the moon orbits earth", "cats purr"]
    batch = enc.tokenize(texts, side="key")
    hidden = enc.model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(dim=1) - 1
    with torch.no_grad():
        expected = hidden[torch.arange(2), last].numpy()
    assert torch.allclose(torch.from_numpy(enc.encode(texts, side="key", show_progress=False)), torch.from_numpy(expected), atol=1e-5)
    enc.save_pretrained(tmp_path / "saved")
    assert DenseEncoder.from_pretrained(tmp_path / "saved").append_eos is True


def test_run_dense_flag_reaches_the_encoder(tiny_decoder, tmp_path):
    from llm_embedder.training.run import build_trainer, parse_args

    argv = ["--model_name_or_path", str(tiny_decoder), "--output_dir", str(tmp_path / "o"), "--pooling", "eos",
            "--append_eos_token", "--train_data", "llm-embedder:llm_embedder_toy/tool.json", "--use_cpu"]
    assert build_trainer(*parse_args(argv)).model.encoder.append_eos is True
