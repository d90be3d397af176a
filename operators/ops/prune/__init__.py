"""The pruning family that masks weights: ``prune`` (magnitude.py, with its per-layer
allocation by a sensitivity pre-pass in sensitivity.py), ``block_prune`` (block.py) and
``nm_prune`` (nm.py)."""
# ruff: noqa: I001  (registry order)

from operators.ops.prune import magnitude as magnitude  # registers prune
from operators.ops.prune import block as block  # registers block_prune
from operators.ops.prune import nm as nm  # registers nm_prune
