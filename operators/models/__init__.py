"""Model definitions: the zoo of architectures built from JSON configs (zoo.py), the one
registry of model sources (sources.py: ``zoo:``, ``timm:``, ``hf:``, ``torchvision:``, and
:func:`~operators.models.sources.register_source` for more), and fitting uploaded weights to a
model (weights.py: ``key_map``, the report of missing and unexpected keys)."""
