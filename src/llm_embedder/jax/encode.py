"""Corpus / query encoding with JAX: ``python -m llm_embedder.jax.train --encode ...`` (or ``-m llm_embedder.jax.encode``).

Same arguments and the same output files as ``llm-embedder encode`` (``PREFIX.npy`` + ``PREFIX.json``,
``.shardIofN`` shards, the resumable chunk cache), because it *is* that command with a JAX encoder
plugged in: so ``llm-embedder search`` reads either. :class:`JaxEncoder` embeds batches of similar length,
padded to a fixed number of rows (a multiple of the mesh size) and to a length bucket, so XLA compiles a
few programs; each batch is sharded over the ``data`` axis of the mesh (all local devices).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .data import BucketTokenizer


class JaxEncoder:
    """``encode(texts, side, instruction, batch_size)`` with the torch ``DenseEncoder``'s interface."""

    def __init__(self, loaded, params=None, mesh=None):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec as P

        from .step import DATA_AXIS, Embedder, make_mesh

        self.loaded = loaded
        self.instructions = loaded.instructions
        self.mesh = mesh or make_mesh(-1)
        self.embedder = Embedder(loaded.model)
        self.params = jax.device_put(self.embedder.params if params is None else params, NamedSharding(self.mesh, P()))
        self.rows = NamedSharding(self.mesh, P(DATA_AXIS))
        self.tokenizer = BucketTokenizer(loaded.tokenizer, {"query": loaded.settings["query_max_length"],
                                                            "key": loaded.settings["key_max_length"]})
        self._embed = jax.jit(self.embedder, static_argnums=(3,))

    @classmethod
    def from_pretrained(cls, name_or_path, pooling_method=None, query_max_length=None, key_max_length=None,
                        append_eos=False) -> "JaxEncoder":
        from .weights import load_encoder

        if append_eos:
            raise UserError("--append_eos_token: the JAX encoder is a BERT encoder; EOS last-token pooling is torch-only")

        return cls(load_encoder(name_or_path, pooling_method=pooling_method, query_max_length=query_max_length,
                                key_max_length=key_max_length))

    def settings(self) -> dict:
        return dict(self.loaded.settings)

    def encode(self, texts, side: str = "key", instruction: str = "", batch_size: int = 64,
               show_progress: bool = True) -> np.ndarray:
        import jax
        from tqdm.auto import tqdm

        texts = list(texts)
        dim = self.loaded.model.config.hidden_size
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        lengths = [len(ids) for ids in self.loaded.tokenizer([instruction + t for t in texts], truncation=True,
                                                              max_length=self.tokenizer.max_lengths[side])["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        rows = -(-batch_size // self.mesh.size) * self.mesh.size  # fixed row count, divisible over the mesh
        with tqdm(total=len(texts), desc=f"encode {side}s (jax)", unit="text", disable=not show_progress) as bar:
            for start in range(0, len(order), batch_size):
                take = order[start:start + batch_size]
                chunk = [texts[i] for i in take] + [""] * (rows - len(take))
                batch = self.tokenizer.tokenize(chunk, side=side, instruction=instruction)
                ids, mask = (jax.device_put(batch[name], self.rows) for name in ("input_ids", "attention_mask"))
                out[take] = np.asarray(self._embed(self.params, ids, mask, side))[: len(take)]
                bar.update(len(take))
        return out


def main(argv=None) -> int:
    """``llm-embedder encode`` with the JAX encoder."""
    from ..retrieval.encode_cli import main as encode_main

    return encode_main(argv, build_encoder=JaxEncoder.from_pretrained)


if __name__ == "__main__":
    main()
