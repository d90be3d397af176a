"""Dataset references (datasets.py) and the MNIST files the project ships (mnist/)."""
