"""Train a dense embedder: ``python run_dense.py ...`` or ``torchrun --nproc_per_node N run_dense.py ...``.

See ``docs/training.md`` for the arguments; ``python run_dense.py --help`` lists them all.
"""
from llm_embedder.training.run import main

if __name__ == "__main__":
    main()
