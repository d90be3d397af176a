"""The ``head_prune`` op: whole attention heads removed from Hugging Face-style transformers.

In every selected attention module (:mod:`operators.ops.heads.attention`; ``include`` /
``exclude`` match the attention module's name, e.g. ``vit.layers.0.attention``) the
``round(ratio * heads)`` heads of least ``criterion`` norm (``l1`` / ``l2`` of the head's
query, key and value rows and its output-projection columns) are removed, at least one head
always kept. The layers become physically smaller plain Linear layers, so the packed
checkpoint records their shapes and rebuilds them like ``neuron_prune``'s; the result exports
to ONNX and ``.pt2`` as it is.

When every attention module of the model keeps the same number of heads and the model's
config can say so (ViT-style modules, which read ``config.head_dim``), ``model.config``'s
``num_attention_heads`` and ``head_dim`` are updated, so the config describes the model;
BERT-style configs derive the head width from ``hidden_size`` and cannot, so they are left.
The report lists per module the heads removed (indices among the heads it had) and the
heads kept, attention-like modules it left alone under ``skipped``, and ``config`` when it
was updated. It is structural: it must come before ops that mask, pack or change storage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from operators.core.model import CompressedModel
from operators.core.op import Op, check_choice, check_number, check_unstructured
from operators.core.registry import register
from operators.ops.heads.attention import Heads, attention_modules, remove_heads


def heads_to_remove(heads: Heads, norms: torch.Tensor, ratio: float) -> list[int]:
    """The ``round(ratio * heads)`` heads of least norm (at most all but one), ascending."""
    count = min(round(ratio * heads.num_heads), heads.num_heads - 1)
    order = torch.argsort(norms, stable=True)
    return sorted(int(i) for i in order[:count])


def _update_config(cm: CompressedModel) -> dict | None:
    """Set ``model.config``'s head counts when one count and width describe every module."""
    config = getattr(cm.model, "config", None)
    everything, _ = attention_modules(cm.model)
    counts = {h.num_heads for h in everything}
    widths = {h.head_dim for h in everything}
    if (
        config is None
        or not hasattr(config, "num_attention_heads")
        or len(counts) != 1
        or len(widths) != 1
        or any(h.style != "vit" for h in everything)
    ):
        return None
    config.num_attention_heads = counts.pop()
    config.head_dim = widths.pop()
    return {"num_attention_heads": config.num_attention_heads, "head_dim": config.head_dim}


@register
@dataclass(frozen=True, kw_only=True)
class HeadPrune(Op):
    """Remove ``ratio`` of each selected attention module's heads, least ``criterion`` norm first."""

    name: ClassVar[str] = "head_prune"
    STRUCTURAL: ClassVar[bool] = True
    STRENGTH: ClassVar[str | None] = "ratio"
    ratio: float
    criterion: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("ratio", self.ratio, 0.0, 1.0)
        check_choice("criterion", self.criterion, ("l1", "l2"))

    def staged(self, previous: float, target: float) -> HeadPrune:
        """Heads already removed are gone: remove the share of what is left that brings the
        total to ``target``."""
        return dataclasses.replace(self, ratio=(target - previous) / (1.0 - previous))

    def apply(self, cm: CompressedModel) -> dict[str, Any]:
        found, others = attention_modules(cm.model)
        selected = [h for h in found if self.selects(h.module)]
        skipped = {n: why for n, why in others.items() if self.selects(n)}
        if not selected and not skipped:
            raise ValueError(
                "head_prune: include/exclude selected no attention module (separate "
                "query/key/value projections: q_proj/k_proj/v_proj/o_proj or query/key/value)"
            )
        if selected:
            check_unstructured(cm, self.name)
        p = 1 if self.criterion == "l1" else 2
        heads: dict[str, dict[str, Any]] = {}
        kept: dict[str, int] = {}
        with torch.no_grad():
            for layout in selected:
                removed = heads_to_remove(layout, layout.head_norms(cm.model, p), self.ratio)
                if removed:
                    kept[layout.module] = remove_heads(cm.model, layout, removed)
                heads[layout.module] = {
                    "removed": removed, "kept": layout.num_heads - len(removed),
                }  # fmt: skip
        report: dict[str, Any] = {
            "heads": heads, "params": sum(t.numel() for t in cm.model.parameters()),
        }  # fmt: skip
        if kept:
            cm.structural = True
            config = _update_config(cm)
            if config is not None:
                report["config"] = config
        if skipped:
            report["skipped"] = skipped
        return report
