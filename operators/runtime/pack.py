"""From a :class:`~operators.core.model.CompressedModel` to the runnable packed model.

:func:`pack_model` projects a CPU copy of the model onto its compression and replaces every
module that has a packing decision with its packed runtime module (found through
:func:`operators.core.registry.pack_module`): exactly what the checkpoint stores.
:func:`packed_model` then lets :func:`operators.runtime.select_runtime` choose, per layer and
batch size, between packed and dense forms: exactly what the checkpoint loads.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from operators.core.model import CompressedModel
from operators.core.registry import pack_module
from operators.runtime.select import select_runtime


def pack_model(cm: CompressedModel) -> nn.Module:
    """A CPU copy of ``cm.model`` projected onto its compression, with every module that has
    a packing decision replaced by its packed runtime module (what the checkpoint stores)."""
    model = copy.deepcopy(cm.model).cpu()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(cm.project(name, param))
    for name, spec in cm.packing.items():
        model.set_submodule(name, pack_module(model.get_submodule(name), spec))
    return model


def packed_model(cm: CompressedModel, runtime: str = "auto") -> nn.Module:
    """The packed, runnable model (eval mode, CPU) exactly as its checkpoint loads."""
    return select_runtime(pack_model(cm).eval(), runtime, cm.input_shape)
