"""``head_prune``: attention modules recognised by their layout and their heads removed
(attention.py), and the op (op.py)."""

from operators.ops.heads import op as op  # registers head_prune
