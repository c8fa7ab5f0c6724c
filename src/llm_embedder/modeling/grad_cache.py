"""GradCache: the full-batch loss with the activation memory of one sub-batch (Gao et al. 2021).

"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (Gao, Zhang, Han, Callan 2021):

1. embed queries and keys in chunks (``query_chunk_size`` / ``key_chunk_size`` rows) without building a
   graph, recording each chunk's RNG state and the autocast state of this forward;
2. compute the loss (any function of the embeddings, e.g. ``compute_loss``, including cross-device
   negatives: it gathers the cached embeddings itself and the gradient of this rank's slice comes back)
   and the gradient of the loss with respect to every local embedding (the "cache");
3. when the caller runs ``loss.backward()``, re-embed each chunk with a graph under its recorded RNG
   state (same dropout masks) and autocast state (same bf16 graph), and backpropagate the cached
   embedding gradient through it.

Step 3 is built so that DDP and DeepSpeed ZeRO-1/2 see exactly one backward per parameter: every chunk
but the last query and key chunks is replayed with ``torch.autograd.grad`` (which does not run the
gradient-accumulation hooks those engines reduce in), summing the parameter gradients in a buffer; the
last chunks run one ordinary backward of ``Σ⟨emb, cached grad⟩ + Σ_p ⟨p, buffer_p⟩``, whose gradient is
the whole batch's. Under DDP the outer forward runs without gradient sync and this last forward goes
through the DDP wrapper with the step's sync setting (see :func:`replay_through`), so gradients are
all-reduced once, after the last chunk. ``loss`` is returned as a leaf whose backward hook runs step 3,
so a Hugging Face Trainer's ``loss.backward()`` (with its division by the accumulation steps) works
unchanged, as in sentence-transformers' ``CachedMultipleNegativesRankingLoss``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Mapping

import torch

EmbedFn = Callable[[Mapping[str, torch.Tensor], str], torch.Tensor]
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


class RandContext:
    """The CPU and current-GPU RNG state at creation, restored inside ``with`` (the outer state is kept)."""

    def __init__(self):
        self.cpu_state = torch.get_rng_state()
        self.devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.device_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork = None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.devices, self.device_states):
            torch.cuda.set_rng_state(state, device)

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)
        self._fork = None


class AutocastState:
    """The autocast settings active at creation (per device type), re-entered by calling it."""

    def __init__(self):
        self.active = [(device, torch.get_autocast_dtype(device)) for device in AUTOCAST_DEVICE_TYPES
                       if torch.is_autocast_enabled(device)]

    def __call__(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for device, dtype in self.active:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        return stack


def no_autocast() -> contextlib.ExitStack:
    """Autocast disabled on every device type (for the loss and its gradient)."""
    stack = contextlib.ExitStack()
    for device in AUTOCAST_DEVICE_TYPES:
        stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def split_inputs(inputs: Mapping[str, torch.Tensor], chunk_size: int) -> list[dict[str, torch.Tensor]]:
    """Row chunks of a tokenised batch (every tensor sliced along dim 0)."""
    rows = {value.shape[0] for value in inputs.values()}
    if len(rows) != 1:
        raise ValueError(f"all input tensors must have the same number of rows, got {sorted(rows)}")
    total = rows.pop()
    return [{name: value[start:start + chunk_size] for name, value in inputs.items()}
            for start in range(0, total, chunk_size)]


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 (losses and cached gradients never run in half precision); other dtypes as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class _Side:
    """One side (queries or keys): its chunks, their RNG states, cached embeddings and their gradients."""

    def __init__(self, name: str, inputs: Mapping[str, torch.Tensor], chunk_size: int):
        if chunk_size < 1:
            raise ValueError(f"{name} chunk_size must be >= 1, got {chunk_size}")
        self.name, self.chunks = name, split_inputs(inputs, chunk_size)
        self.states: list[RandContext] = []
        self.grad: torch.Tensor | None = None
        self.offsets = []

    def embed_without_graph(self, embed: EmbedFn) -> torch.Tensor:
        parts = []
        for chunk in self.chunks:
            self.states.append(RandContext())
            with torch.no_grad():
                parts.append(embed(chunk, self.name))
        sizes = [p.shape[0] for p in parts]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return upcast(torch.cat(parts)).detach().requires_grad_()

    def surrogate(self, embed: EmbedFn, index: int, autocast: AutocastState) -> torch.Tensor:
        """``⟨emb_chunk, cached grad⟩`` with a graph, under the chunk's RNG and the forward's autocast."""
        with self.states[index], autocast():
            emb = embed(self.chunks[index], self.name)
        grad = self.grad[self.offsets[index]:self.offsets[index + 1]]
        return (upcast(emb) * grad).sum()


class GradCache:
    """One step's cache (see the module docstring); ``parameters`` are the trainable parameters."""

    def __init__(self, embed: EmbedFn, parameters: Iterable[torch.nn.Parameter], query_inputs, key_inputs,
                 query_chunk_size: int, key_chunk_size: int):
        self.embed = embed
        self.params = [p for p in parameters if p.requires_grad]
        self.sides = (_Side("query", query_inputs, query_chunk_size), _Side("key", key_inputs, key_chunk_size))
        self.autocast = AutocastState()
        self.final_forward: Callable[["GradCache"], torch.Tensor] | None = None
        self._buffer: list[torch.Tensor | None] = []
        self._scale = 1.0

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], dict]) -> dict[str, torch.Tensor]:
        """``loss_fn(q, k)`` on the cached embeddings; its ``"loss"`` backpropagates through the chunks."""
        q, k = (side.embed_without_graph(self.embed) for side in self.sides)
        # autocast off while differentiating the loss too: on CPU the backward of the loss would otherwise run
        # its matmuls in bf16 (the autograd engine runs on this thread, inside the caller's autocast)
        with torch.enable_grad(), no_autocast():
            out = dict(loss_fn(q, k))
            grads = torch.autograd.grad(out["loss"], [q, k], allow_unused=True, materialize_grads=True)
        for side, grad in zip(self.sides, grads):
            side.grad = grad.detach()
        loss = out["loss"].detach().requires_grad_()
        loss.register_hook(self._backward)
        out["loss"] = loss
        return out

    def _backward(self, grad_output: torch.Tensor) -> None:
        self._scale = grad_output.detach()
        self._buffer = [None] * len(self.params)
        with torch.enable_grad():
            for side in self.sides:
                for index in range(len(side.chunks) - 1):
                    surrogate = side.surrogate(self.embed, index, self.autocast) * self._scale
                    grads = torch.autograd.grad(surrogate, self.params, allow_unused=True)
                    for i, grad in enumerate(grads):
                        if grad is not None:
                            self._buffer[i] = grad if self._buffer[i] is None else self._buffer[i] + grad
            final = self.final_forward(self) if self.final_forward is not None else self.final_surrogate()
            final.backward()
        self._buffer = []

    def final_surrogate(self) -> torch.Tensor:
        """The last query and key chunks' surrogate plus ``Σ_p ⟨p, buffered grad_p⟩``: its backward deposits
        the whole batch's gradient in one pass (call it inside the DDP wrapper's forward)."""
        total = sum(side.surrogate(self.embed, len(side.chunks) - 1, self.autocast) for side in self.sides)
        total = total * self._scale
        for param, grad in zip(self.params, self._buffer):
            if grad is not None:
                total = total + (param * grad.to(param.dtype)).sum()
        return total


def grad_cached_loss(embed: EmbedFn, query_inputs: Mapping[str, torch.Tensor],
                     key_inputs: Mapping[str, torch.Tensor],
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                     chunk_size: int, key_chunk_size: int | None = None,
                     parameters: Iterable[torch.nn.Parameter] | None = None,
                     final_forward: Callable[[GradCache], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``loss_fn(q, k)`` on chunk-wise embeddings; its ``"loss"`` backpropagates chunk by chunk.

    ``embed(inputs, side)`` maps a (chunk of a) tokenised batch to embeddings, ``side`` being "query" or
    "key"; ``loss_fn`` returns a dict with a scalar ``"loss"`` (other entries are passed through).
    ``chunk_size`` is the query chunk size and, unless ``key_chunk_size`` is given, the key one.
    ``parameters`` default to those of ``embed``'s module (``embed.__self__``); ``final_forward`` routes
    the last chunks through a DDP wrapper (see :func:`replay_through`).
    """
    for size in (chunk_size, key_chunk_size or chunk_size):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {size!r}")
    if parameters is None:
        parameters = embed.__self__.parameters()
    cache = GradCache(embed, parameters, query_inputs, key_inputs, chunk_size, key_chunk_size or chunk_size)
    cache.final_forward = final_forward
    return cache.loss(loss_fn)


@contextlib.contextmanager
def replay_through(wrapper: torch.nn.Module, module: torch.nn.Module):
    """For one training step, route GradCache's last replayed chunks through a DDP ``wrapper`` of ``module``.

    The outer forward runs with DDP's gradient sync off (its output, a cached loss, reaches no parameter);
    the last chunks' forward runs through ``wrapper`` with the step's own sync setting (off inside
    ``no_sync`` for gradient accumulation), so DDP all-reduces every gradient once, after the last chunk.
    ``module.grad_cache_final_forward`` is set for the step. Other wrappers (DeepSpeed ZeRO-1/2, which
    reduces in gradient hooks, or none) need no routing.
    """
    sync = getattr(wrapper, "require_backward_grad_sync", None)
    if sync is None or wrapper is module:
        yield
        return

    def final_forward(cache: GradCache) -> torch.Tensor:
        wrapper.require_backward_grad_sync = sync
        try:
            return wrapper(grad_cache_final=cache)
        finally:
            wrapper.require_backward_grad_sync = False

    module.grad_cache_final_forward = final_forward
    wrapper.require_backward_grad_sync = False
    try:
        yield
    finally:
        wrapper.require_backward_grad_sync = sync
        module.grad_cache_final_forward = None
