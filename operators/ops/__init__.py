"""The ops, one folder each: algorithm, op, packed kind(s) and fine-tune projection.

Importing a folder registers its op(s) and kinds in :mod:`operators.core.registry`, in the
order below (the order error messages and docs list them in). Adding an op is one folder here
and one line below.
"""
# ruff: noqa: I001  (the order of these imports is the registry's order)

from operators.ops import prune as prune  # prune, block_prune, nm_prune
from operators.ops import quantize as quantize  # quantize
from operators.ops import mpd as mpd  # mpd
from operators.ops import channels as channels  # neuron_prune, filter_prune
from operators.ops import heads as heads  # head_prune
from operators.ops import cluster as cluster  # cluster
from operators.ops import unify as unify  # unify
from operators.ops import lowrank as lowrank  # lowrank
