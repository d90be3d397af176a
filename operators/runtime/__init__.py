"""The runnable form of a compressed model: packing, and packed-or-dense choice per layer.

- :mod:`operators.runtime.pack`: a compressed model to its packed modules (what the checkpoint
  stores) and to the runnable model (what it loads);
- :mod:`operators.runtime.select`: per layer, device and batch size, the packed form or the
  dense one, whichever was measured faster; permutation folding between MPD layers;
- :mod:`operators.runtime.sparse`: the CSR form of mostly-zero Linear layers.

Packed kinds are found through :mod:`operators.core.registry`; nothing here imports an op.
"""

from operators.runtime.pack import pack_model, packed_model
from operators.runtime.select import (
    RUNTIMES,
    BatchDispatch,
    fold_permutations,
    select_runtime,
    stored_parameters,
)
from operators.runtime.sparse import SparseLinear

__all__ = [
    "RUNTIMES",
    "BatchDispatch",
    "SparseLinear",
    "fold_permutations",
    "pack_model",
    "packed_model",
    "select_runtime",
    "stored_parameters",
]
