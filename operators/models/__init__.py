"""Model definitions: the zoo of architectures built from JSON configs (zoo.py)."""
