"""Compression operators: the pure-library core of autocompress (no HTTP, DB or queue).

A trial is: build or load a model, apply a strategy, fine-tune with the compression held,
save the packed checkpoint, measure. In a notebook::

    from pathlib import Path
    from operators import (apply_strategy, build_model, evaluate, finetune, load_checkpoint,
                           load_dataset, save_checkpoint, save_dense_checkpoint, train)

    data = load_dataset("builtin:digits")
    config = {"in_features": 64, "num_classes": 10}
    model = build_model("lenet-300-100", config)
    train(model, data, epochs=5)
    dense_bytes = save_dense_checkpoint(model, Path("dense.safetensors"),
                                        architecture="lenet-300-100", config=config)

    cm = apply_strategy(model, [{"op": "prune", "sparsity": 0.9},
                                {"op": "quantize", "dtype": "float16"}])
    finetune(cm, data, method="masked", epochs=2)
    size = save_checkpoint(cm, Path("packed.safetensors"),
                           architecture="lenet-300-100", config=config)

    packed, manifest = load_checkpoint(Path("packed.safetensors"))
    print(evaluate(packed, data), dense_bytes / size)

Or with op objects (Condensa-like: ops project, the checkpoint packs, the report tells)::

    from operators import MPD, Compose, Prune, Quantize
    cm = Compose([MPD(blocks=10), Quantize(dtype="float16")]).apply(model)
    finetune(cm, data, method="masked", epochs=2)
    fast = cm.packed()          # runnable, packed where that was measured faster
    print(cm.report)

Modules: :mod:`~operators.zoo` (architectures), :mod:`~operators.datasets` (dataset
references), :mod:`~operators.training` (the training loop), :mod:`~operators.strategy`
(ops and strategies), :mod:`~operators.pruning` (block and N:M), :mod:`~operators.mpd`
(MPDCompress), :mod:`~operators.structured` (neuron and filter removal),
:mod:`~operators.finetune`, :mod:`~operators.packed` (packed module kinds),
:mod:`~operators.runtime` (packed or dense, measured), :mod:`~operators.checkpoint` (the
packed file format), :mod:`~operators.metrics` (the job-spec metrics).
"""

from operators.checkpoint import (
    load_checkpoint,
    load_weights,
    read_manifest,
    save_checkpoint,
    save_dense_checkpoint,
)
from operators.datasets import Dataset, DatasetError, check_reference, load_dataset
from operators.finetune import FINETUNE_METHODS, finetune
from operators.metrics import compute_metrics, count_macs, count_params, evaluate, measure_latency
from operators.mpd import MPD
from operators.pruning import BlockPrune, NMPrune
from operators.quantization import Cluster
from operators.strategy import (
    OPS,
    Compose,
    CompressedModel,
    Op,
    Prune,
    Quantize,
    apply_strategy,
    validate_steps,
)
from operators.structured import FilterPrune, NeuronPrune
from operators.training import Cancelled, train
from operators.unification import Unify
from operators.zoo import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "FINETUNE_METHODS",
    "MPD",
    "OPS",
    "BlockPrune",
    "Cancelled",
    "Cluster",
    "Compose",
    "CompressedModel",
    "Dataset",
    "DatasetError",
    "FilterPrune",
    "NMPrune",
    "NeuronPrune",
    "Op",
    "Prune",
    "Quantize",
    "Unify",
    "apply_strategy",
    "build_model",
    "check_reference",
    "compute_metrics",
    "count_macs",
    "count_params",
    "evaluate",
    "finetune",
    "load_checkpoint",
    "load_dataset",
    "load_weights",
    "measure_latency",
    "read_manifest",
    "save_checkpoint",
    "save_dense_checkpoint",
    "train",
    "validate_steps",
]
