"""Channel removal: ``neuron_prune`` and ``filter_prune`` (op.py) with the l1/l2 ranking and
physical removal on one dependency graph per model (graph.py), and genetic channel selection
(ga.py, the algorithm; ga_select.py, its use on a network)."""

from operators.ops.channels import op as op  # registers neuron_prune and filter_prune
