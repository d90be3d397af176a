"""Model benchmark (issue 9): timm and Hugging Face models trained on MNIST, compressed by the
service through its HTTP API, timed dense and compressed in PyTorch and onnxruntime.

    .venv/bin/python -m bench.models [--quick] [--models resnet18,vit] [--trials 3] ...

See :mod:`bench.models.run` for what is measured and ``bench/README.md`` for the results.
"""
