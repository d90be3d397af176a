"""``quantize``: float16 / bfloat16 storage and int8 grids (op.py), the int8 kernels (int8.py)
and the ``int8`` packed kind (packed.py)."""

from operators.ops.quantize import op as op  # registers the op and its kind
