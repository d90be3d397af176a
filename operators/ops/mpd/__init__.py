"""``mpd``: MPDCompress permuted block-diagonal masks (op.py) and their packed kinds (packed.py)."""

from operators.ops.mpd import op as op  # registers the op and its kinds
