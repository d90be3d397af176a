"""What every op, format and runtime shares: the compressed-model state (model.py), the op
protocol with parameter checks and layer selection (op.py), the one registry of ops, module
kinds and packers (registry.py), strategies (strategy.py) and mode switching (modes.py)."""
