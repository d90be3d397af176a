"""``cluster``: DP-optimal 1-D k-means (algorithm.py), the op and its codebook constraint
(op.py), its per-layer widths from a sensitivity pre-pass (sensitivity.py) and the
``clustered`` packed kind (packed.py)."""

from operators.ops.cluster import op as op  # registers the op and its kind
