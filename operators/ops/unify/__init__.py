"""``unify``: micro-structured weight unification: the exact projection (algorithm.py), the op
and its constraint (op.py) and the ``unified`` packed kind (packed.py)."""

from operators.ops.unify import op as op  # registers the op and its kind
