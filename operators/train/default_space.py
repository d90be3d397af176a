"""The search space the service uses when a job gives none: strategies built from the ops that
fit the model's layers, staged where staging pays (gradual pruning before clustering).

:func:`default_search_space` looks at the model's layers only (it runs on a model built on the
meta device: nothing is allocated) and returns a job-spec ``search_space`` object, so a job
without one shows in its JSON exactly what was searched. The strategies, each included when
the model has the layers it needs:

- ``deep-compression``: ``prune`` (``sparsity`` 0.8..0.995, ``schedule`` 6 cubic stages), then
  ``cluster`` (``bits`` 2..5, biases to 16 values: ``bias_bits`` 4), then ``quantize``
  float16: Deep Compression's order. Six
  stages, not three: measured on LeNet-300-100/MNIST (1 epoch of masked fine-tuning per
  stage, one seed, validation points lost), sparsity 0.97 + 2 bits lost 1.22 in 3 stages and
  0.64 in 6 (2 epochs per stage in 3 stages: 0.84); the gradual ramp's small last steps are
  what the fine-tune recovers from. The range reaches 0.995, not 0.99: on LeNet-5-Caffe the
  file at 0.99 and 3 bits is still about 250x, so the record lies beyond 0.99 if the
  fine-tune holds the accuracy there;
- ``prune+fp16``: one-shot ``prune`` (0.5..0.95) and float16, the cheap baseline strategy;
- ``neurons+fp16`` / ``filters+fp16``: ``neuron_prune`` / ``filter_prune`` (``ratio`` 0.1..0.7,
  l1) with float16, where the model has hidden Linear layers / more than one conv layer
  (channel removal makes the model faster, not just smaller); ``filter_prune`` keeps widths a
  multiple of 8 (``round_to``) on every CNN, its layers of fewer than 16 filters whole
  (:func:`operators.ops.channels.graph.channel_round_to`: odd widths ran slower than dense
  in onnxruntime);
- ``heads+neurons+fp16``: ``head_prune`` (``ratio`` 0.1..0.6) then ``neuron_prune`` (0.1..0.6)
  with float16, where the model has attention modules whose heads ``head_prune`` removes (a
  transformer: fewer heads and a narrower FFN make it faster);
- ``lowrank+fp16``: ``lowrank`` (``energy`` 0.5..0.99) with float16, for Linear or Conv2d layers;
- ``mpd+fp16``: ``mpd`` (``blocks`` 2..16) with float16, for Linear layers of at least 32 units.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from operators.core.op import WEIGHT_LAYERS, output_layer
from operators.ops.channels.graph import channel_round_to
from operators.ops.heads.attention import attention_modules

FP16 = {"op": "quantize", "dtype": "float16"}


def _strategy(name: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "steps": [*steps, FP16]}


def _round_to(model: nn.Module) -> dict[str, int]:
    round_to = channel_round_to(model)
    return {"round_to": round_to} if round_to > 1 else {}


def default_search_space(model: nn.Module) -> dict[str, Any]:
    """A job-spec ``search_space`` for ``model`` (see the module docstring); ValueError if the
    model has no Linear or Conv layer to compress."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    if not layers:
        raise ValueError("the model has no Linear or Conv layer to compress")
    last = output_layer(model)
    hidden_linear = [m for m in layers if isinstance(m, nn.Linear) and m is not last]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    strategies = [
        _strategy(
            "deep-compression",
            {"op": "prune", "sparsity": {"min": 0.8, "max": 0.995},
             "schedule": {"stages": 6, "ramp": "cubic"}},
            {"op": "cluster", "bits": {"min": 2, "max": 5, "type": "int"}, "bias_bits": 4},
        ),  # fmt: skip
        _strategy("prune+fp16", {"op": "prune", "sparsity": {"min": 0.5, "max": 0.95}}),
    ]
    if hidden_linear:
        strategies.append(
            _strategy("neurons+fp16", {"op": "neuron_prune", "ratio": {"min": 0.1, "max": 0.7}})
        )
    if len(convs) > 1:
        strategies.append(
            _strategy("filters+fp16", {"op": "filter_prune", "ratio": {"min": 0.1, "max": 0.7},
                                       **_round_to(model)})
        )
    if attention_modules(model)[0]:
        strategies.append(_strategy(
            "heads+neurons+fp16",
            {"op": "head_prune", "ratio": {"min": 0.1, "max": 0.6}},
            {"op": "neuron_prune", "ratio": {"min": 0.1, "max": 0.6}},
        ))  # fmt: skip
    if hidden_linear or convs:
        strategies.append(
            _strategy("lowrank+fp16", {"op": "lowrank", "energy": {"min": 0.5, "max": 0.99}})
        )
    if any(min(m.in_features, m.out_features) >= 32 for m in hidden_linear):
        strategies.append(
            _strategy("mpd+fp16", {"op": "mpd", "blocks": {"min": 2, "max": 16, "type": "int"}})
        )
    return {"strategies": strategies}
