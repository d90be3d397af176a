"""Attention modules whose heads can be removed, recognised by their layout, and the removal.

Two layouts are recognised, the ones Hugging Face transformers use:

- **ViT-style** (``ViTAttention``, and any module like it): Linear ``q_proj``, ``k_proj``,
  ``v_proj``, ``o_proj`` and an integer ``head_dim``; the projections are split into heads by
  ``view(..., -1, head_dim)``;
- **BERT-style** (``BertSelfAttention`` and its kin): Linear ``query``, ``key``, ``value`` and an
  integer ``attention_head_size``; the output projection is ``dense`` of the sibling ``output``
  module (``BertAttention.self`` / ``BertAttention.output.dense``).

Removing head ``h`` removes rows ``h*d .. (h+1)*d - 1`` (weight and bias) of the query, key and
value projections and the same input columns of the output projection; because the forward
reshapes with ``-1`` heads it runs unchanged, and the module's ``num_attention_heads`` (and
``all_head_size`` where present) are updated to describe it. Grouped-query attention (key and
value narrower than the query), a head width that does not divide the projections, or any
other module that looks like attention (``nn.MultiheadAttention``, fused ``qkv`` layers) is
not recognised: :func:`attention_modules` returns it with the reason it is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn


@dataclass(frozen=True)
class Heads:
    """One attention module's head layout: its projections by module name, and its head width."""

    module: str  # the attention module (whose num_attention_heads is updated)
    q: str
    k: str
    v: str
    o: str  # the output projection, whose input columns follow the heads
    head_dim: int
    num_heads: int
    style: str  # "vit" (honours config.head_dim) or "bert"

    def head_norms(self, model: nn.Module, p: int) -> torch.Tensor:
        """The ``p``-norm of each head's query, key and value rows and output columns."""
        d = self.head_dim
        parts = [model.get_submodule(n).weight.detach().reshape(self.num_heads, d, -1)
                 for n in (self.q, self.k, self.v)]  # fmt: skip
        out = model.get_submodule(self.o).weight.detach()
        parts.append(out.reshape(out.shape[0], self.num_heads, d).transpose(0, 1))
        flat = torch.cat([t.reshape(self.num_heads, -1) for t in parts], dim=1)
        return flat.abs().pow(p).sum(dim=1).pow(1.0 / p)


def _name(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def _linear(module: nn.Module, attr: str) -> nn.Linear | None:
    layer = getattr(module, attr, None)
    return layer if type(layer) is nn.Linear else None


def _layout(model: nn.Module, name: str, module: nn.Module) -> Heads | str | None:
    """The module's :class:`Heads`, a reason it is left alone, or None if it is no attention."""
    if all(_linear(module, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
        style, q, k, v, o, d = "vit", "q_proj", "k_proj", "v_proj", "o_proj", "head_dim"
        o_name = _name(name, o)
    elif all(_linear(module, a) for a in ("query", "key", "value")):
        style, q, k, v, d = "bert", "query", "key", "value", "attention_head_size"
        parent_name = name.rsplit(".", 1)[0] if "." in name else ""
        parent = model.get_submodule(parent_name) if name else None
        output = getattr(parent, "output", None)
        if name.rsplit(".", 1)[-1] != "self" or _linear(output, "dense") is None:
            return "no output projection (a sibling output.dense) found"
        o_name = _name(_name(parent_name, "output"), "dense")
    elif isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__:
        return "not a layout head_prune knows (separate q/k/v projections and a head width)"
    else:
        return None
    head_dim = getattr(module, d, None)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        return f"no integer {d} attribute"
    width = getattr(module, q).out_features
    if getattr(module, k).out_features != width or getattr(module, v).out_features != width:
        return "grouped-query attention: key and value have fewer heads than the query"
    if width % head_dim or model.get_submodule(o_name).in_features != width:
        return f"the projections' width {width} is not whole heads of {head_dim}"
    return Heads(name, _name(name, q), _name(name, k), _name(name, v), o_name, head_dim,
                 width // head_dim, style)  # fmt: skip


def attention_modules(model: nn.Module) -> tuple[list[Heads], dict[str, str]]:
    """The recognised attention modules of ``model`` in module order, and the modules that
    look like attention but are left alone, by name, with the reason. A module that contains
    or sits inside a recognised one (``BertAttention`` around ``BertSelfAttention``) is
    neither."""
    found: list[Heads] = []
    other: dict[str, str] = {}
    for name, module in model.named_modules():
        layout = _layout(model, name, module)
        if isinstance(layout, Heads):
            found.append(layout)
        elif layout is not None:
            other[name] = layout
    names = [h.module for h in found]

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".") or not a or not b

    skipped = {n: why for n, why in other.items() if not any(related(n, h) for h in names)}
    return found, skipped


def head_prune_refusal(model: nn.Module) -> str | None:
    """Why ``head_prune`` can remove nothing from ``model`` (no attention module of a layout
    :func:`attention_modules` recognises, and what it saw instead), or None when it can."""
    found, others = attention_modules(model)
    if found:
        return None
    if others:
        name, why = next(iter(others.items()))
        return f"the model has no attention module whose heads it can remove ({name}: {why})"
    return ("the model has no attention module (separate query/key/value projections: "
            "q_proj/k_proj/v_proj/o_proj or query/key/value) whose heads it can remove")  # fmt: skip


def remove_heads(model: nn.Module, heads: Heads, removed: list[int]) -> int:
    """Remove the heads ``removed`` (indices) of one attention module in place; return the
    number of heads kept."""
    d = heads.head_dim
    rows = [h * d + i for h in sorted(removed) for i in range(d)]
    for name in (heads.q, heads.k, heads.v):
        tp.prune_linear_out_channels(model.get_submodule(name), rows)
    tp.prune_linear_in_channels(model.get_submodule(heads.o), rows)
    kept = heads.num_heads - len(removed)
    module = model.get_submodule(heads.module)
    module.num_attention_heads = kept
    if hasattr(module, "all_head_size"):
        module.all_head_size = kept * d
    return kept
