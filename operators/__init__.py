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

    from operators import MPD, Compose, Quantize, packed_model
    cm = Compose([MPD(blocks=10), Quantize(dtype="float16")]).apply(model)
    finetune(cm, data, method="masked", epochs=2)
    fast = packed_model(cm)     # runnable, packed where that was measured faster
    print(cm.report)

Layout (each layer imports only the ones below it; ``make test`` checks it):

- :mod:`operators.ops`: one folder per op (algorithm, op, packed kinds), registering itself;
- :mod:`operators.train`: the training loop and fine-tuning methods;
- :mod:`operators.export`: a packed checkpoint as ONNX or ``.pt2``; ``.pt2`` read without pickle;
- :mod:`operators.metrics`: the job-spec metrics (size, MACs, measured latency, accuracy);
- :mod:`operators.format`: codecs, stored layers, the checkpoint;
- :mod:`operators.runtime`: packing, packed-or-dense choice per layer and batch size;
- :mod:`operators.core`: compressed-model state, the op protocol, the one registry, strategies;
- :mod:`operators.models` (the zoo; the model sources ``timm:``, ``hf:``, ... in
  :mod:`operators.models.sources`, whose ``build(architecture, config)`` the checkpoint uses)
  and :mod:`operators.data` (dataset references).
"""

from operators import export as export  # ONNX / .pt2 export; registers the export: source
from operators import ops as ops  # registers every op and packed kind
from operators.core.model import CompressedModel, Constraint, PackSpec
from operators.core.op import Op
from operators.core.registry import OPS
from operators.core.strategy import Compose, apply_strategy, parse_steps, validate_steps
from operators.data.datasets import Dataset, DatasetError, check_reference, load_dataset
from operators.format.checkpoint import (
    load_checkpoint,
    load_weights,
    read_manifest,
    save_checkpoint,
    save_dense_checkpoint,
)
from operators.metrics import (
    compute_metrics,
    count_macs,
    count_params,
    evaluate,
    held_out_metrics,
    measure_latency,
)
from operators.models.zoo import ARCHITECTURES, build_model
from operators.ops.channels.op import FilterPrune, NeuronPrune
from operators.ops.cluster.op import Cluster
from operators.ops.lowrank.op import LowRank
from operators.ops.mpd.op import MPD
from operators.ops.prune.block import BlockPrune
from operators.ops.prune.magnitude import Prune
from operators.ops.prune.nm import NMPrune
from operators.ops.quantize.op import Quantize
from operators.ops.unify.op import Unify
from operators.runtime import pack_model, packed_model, select_runtime
from operators.train.default_space import default_search_space
from operators.train.finetune import FINETUNE_METHODS, METHOD_FIELDS, finetune, method_params
from operators.train.loop import Cancelled, train
from operators.train.staged import run_strategy, validate_strategy

__all__ = [
    "ARCHITECTURES",
    "FINETUNE_METHODS",
    "METHOD_FIELDS",
    "MPD",
    "OPS",
    "BlockPrune",
    "Cancelled",
    "Cluster",
    "Compose",
    "CompressedModel",
    "Constraint",
    "Dataset",
    "DatasetError",
    "FilterPrune",
    "LowRank",
    "NMPrune",
    "NeuronPrune",
    "Op",
    "PackSpec",
    "Prune",
    "Quantize",
    "Unify",
    "apply_strategy",
    "build_model",
    "check_reference",
    "compute_metrics",
    "count_macs",
    "count_params",
    "default_search_space",
    "evaluate",
    "finetune",
    "held_out_metrics",
    "load_checkpoint",
    "load_dataset",
    "load_weights",
    "measure_latency",
    "method_params",
    "pack_model",
    "packed_model",
    "parse_steps",
    "read_manifest",
    "run_strategy",
    "save_checkpoint",
    "save_dense_checkpoint",
    "select_runtime",
    "train",
    "validate_steps",
    "validate_strategy",
]
