"""The sensitivity pre-pass shared by ops that allocate a global strength per layer
(``prune`` and ``cluster`` with ``allocate: sensitivity``).

:func:`layer_curves` scores, for each selected layer alone, each variant of its weight an op
proposes (a sparsity, a bit width) by the KL divergence of the model's output distribution
from the model as it is, on at most :data:`SAMPLES` calibration inputs (``cm.example_input``;
no labels are needed), as TensorRT Model Optimizer and AIMET do. The curves are cached per
process (:data:`CACHE_SIZE` entries) by a hash of the op's settings, the layers' weights and
masks and the inputs, so the trials of one job, which start from the same weights, run the
pre-pass once. How the curves become per-layer strengths is each op's own business.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence

import torch
from torch.nn import functional as F

from operators.core.model import CompressedModel
from operators.core.modes import eval_mode

SAMPLES = 128
CACHE_SIZE = 16
Layer = tuple[str, torch.Tensor, torch.Tensor | None]  # (weight name, weight, keep-mask or None)
Variants = Callable[[str, torch.Tensor, torch.Tensor | None], Iterable[tuple[Hashable, torch.Tensor]]]
_CACHE: OrderedDict[str, dict[str, dict[Hashable, float]]] = OrderedDict()


def output_kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(softmax(reference) || softmax(logits)), averaged over the batch."""
    log_p = F.log_softmax(reference.float(), dim=-1)
    log_q = F.log_softmax(logits.float(), dim=-1)
    return float(F.kl_div(log_q, log_p, log_target=True, reduction="batchmean"))


def _key(settings: object, layers: Sequence[Layer], x: torch.Tensor) -> str:
    digest = hashlib.sha256(repr((settings, SAMPLES)).encode())
    for name, weight, mask in layers:
        for t in (weight, mask):
            if t is not None:
                digest.update(repr((name, t.dtype, tuple(t.shape))).encode())
                digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digest.update(repr((x.dtype, tuple(x.shape))).encode())
    digest.update(x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.no_grad()
def layer_curves(
    cm: CompressedModel, op_name: str, layers: Sequence[Layer], settings: object, variants: Variants
) -> dict[str, dict[Hashable, float]]:
    """``{weight name: {variant key: KL}}``: each layer's weight replaced, alone, by each of
    ``variants(name, weight, mask)`` (``settings`` names what the variants depend on, for the
    cache). ValueError without calibration inputs."""
    if cm.example_input is None:
        raise ValueError(f"{op_name}: allocate sensitivity needs calibration inputs (example_input)")
    params = dict(cm.model.named_parameters())
    x = cm.example_input[:SAMPLES].to(params[layers[0][0]].device)
    key = _key((op_name, settings), layers, x)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    curves: dict[str, dict[Hashable, float]] = {}
    with eval_mode(cm.model):
        reference = cm.model(x)
        for name, weight, mask in layers:
            param, original = params[name], params[name].detach().clone()
            curves[name] = {}
            for variant, replaced in variants(name, weight, mask):
                param.copy_(replaced.to(param))
                curves[name][variant] = output_kl(reference, cm.model(x))
            param.copy_(original)
    _CACHE[key] = curves
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return curves
