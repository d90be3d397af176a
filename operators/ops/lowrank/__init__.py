"""``lowrank``: truncated-SVD factors (algorithm.py), the factored layer kind (layer.py) and the
op (op.py)."""

from operators.ops.lowrank import op as op  # registers the op and its kind
