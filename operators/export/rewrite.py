"""The FX rewrite that gives an exported program's module real layers for the compression ops.

``ExportedProgram.module()`` is a ``GraphModule`` of ATen calls: its parameters sit on plain
``nn.Module`` holders (``fc1.weight`` on a holder ``fc1``) and are read with ``get_attr`` nodes,
so no ``nn.Linear`` / ``nn.Conv2d`` exists for an op to find. :func:`to_layers` replaces each
call of

- ``aten.linear.default(x, w, b)`` (what ``torch.export.export`` of this torch version records
  for ``nn.Linear``) with ``call_module`` of an ``nn.Linear``;
- ``aten.addmm.default(b, x, t(w))`` and ``aten.mm.default(x, t(w))`` (a decomposed
  ``nn.Linear``, or a forward written with ``torch.addmm`` / ``torch.mm``), where ``t`` is
  ``aten.t``, ``aten.permute(w, [1, 0])`` or ``aten.transpose(w, 0, 1)`` of the 2-D weight,
  ``b`` is 1-D, ``beta`` / ``alpha`` are 1, and the weight and its transpose are used only
  there, with ``call_module`` of an ``nn.Linear``;
- ``aten.conv2d.default(x, w, b, stride, padding, dilation, groups)`` (``nn.Conv2d``) and
  ``aten.convolution.default(x, w, b, stride, padding, dilation, False, output_padding,
  groups)`` with a 4-D weight (the decomposed form) with ``call_module`` of an ``nn.Conv2d``;

when ``w`` (and ``b``) are parameters read by ``get_attr`` and named ``<path>.weight`` /
``<path>.bias`` on a holder that holds nothing else. The new layer is put at ``<path>``,
holding those very parameters, so the state-dict keys (``fc1.weight``) and the outputs stay
the same. Other calls (a string padding, a transposed or 1-D/3-D convolution, a weight computed
in the graph, a matmul whose weight is used elsewhere too) are left as they are: those layers
run but no op finds them.

Ops that replace a module (``mpd``, ``lowrank``, packing) swap the attribute the ``call_module``
node names, which the generated code looks up at every call.
"""

from __future__ import annotations

import torch
from torch import fx, nn

_aten = torch.ops.aten
LINEAR = _aten.linear.default
CONV2D = _aten.conv2d.default
CONVOLUTION = _aten.convolution.default
ADDMM = _aten.addmm.default
MM = _aten.mm.default
TRANSPOSES = (_aten.t.default, _aten.permute.default, _aten.transpose.int)


def _pair(value: object, default: int) -> tuple[int, int]:
    if value is None:
        return default, default
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]  # type: ignore[union-attr]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _transposed(node: object) -> fx.Node | None:
    """The ``get_attr`` node that ``node`` transposes (a 2-D ``t`` / ``permute`` /
    ``transpose``), when the transpose is its only use and the matmul the transpose's only use."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in TRANSPOSES:
        return None
    if len(node.users) != 1 or not node.args:
        return None
    if node.target is _aten.permute.default and [int(d) for d in node.args[1]] != [1, 0]:
        return None
    if node.target is _aten.transpose.int and sorted(int(d) % 2 for d in node.args[1:3]) != [0, 1]:
        return None
    weight = node.args[0]
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or len(weight.users) != 1:
        return None
    return weight


def _matmul_args(node: fx.Node) -> tuple[object, object, object, fx.Node] | None:
    """(input, weight, bias, transpose) of an ``addmm`` / ``mm`` that is a Linear, or None."""
    if node.target is ADDMM:
        if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
            return None
        bias, x, mat = node.args
        if not isinstance(bias, fx.Node) or len(bias.users) != 1:
            return None
    elif node.target is MM and len(node.args) == 2:
        (x, mat), bias = node.args, None
    else:
        return None
    weight = _transposed(mat)
    return None if weight is None else (x, weight, bias, mat)  # type: ignore[return-value]


def _call_args(node: fx.Node) -> tuple[object, object, object, list[fx.Node]]:
    """(input, weight, bias, nodes to drop once unused) of a call :func:`_layer_args` took."""
    matmul = _matmul_args(node)
    if matmul is not None:
        x, weight, bias, transpose = matmul
        return x, weight, bias, [transpose]
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return node.args[0], weight, bias, []


def _layer_args(node: fx.Node) -> tuple[str, dict] | None:
    """(kind, hyper-parameters) of a call the rewrite handles, or None."""
    if node.target is LINEAR or _matmul_args(node) is not None:
        return "linear", {}
    if node.target is CONV2D:
        padding = _arg(node, 4, "padding", 0)
        if isinstance(padding, str):
            return None
        return "conv2d", {
            "stride": _pair(_arg(node, 3, "stride", 1), 1),
            "padding": _pair(padding, 0),
            "dilation": _pair(_arg(node, 5, "dilation", 1), 1),
            "groups": int(_arg(node, 6, "groups", 1)),
        }
    if node.target is CONVOLUTION and len(node.args) == 9 and not node.args[6]:
        if any(int(p) for p in node.args[7]):  # output padding of a non-transposed conv
            return None
        return "conv2d", {
            "stride": _pair(node.args[3], 1),
            "padding": _pair(node.args[4], 0),
            "dilation": _pair(node.args[5], 1),
            "groups": int(node.args[8]),
        }
    return None


def _holder(gm: fx.GraphModule, node: object, attr: str) -> str | None:
    """The holder path of a ``get_attr`` node reading parameter ``<path>.<attr>``, or None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    path, _, name = str(node.target).rpartition(".")
    if name != attr or not path:
        return None
    try:
        value = gm.get_parameter(str(node.target))
    except AttributeError:
        return None
    return path if value.is_floating_point() else None


def _make_layer(kind: str, weight: nn.Parameter, bias: nn.Parameter | None, hyper: dict) -> nn.Module:
    shape = weight.shape
    with torch.device("meta"):
        if kind == "linear":
            layer: nn.Module = nn.Linear(shape[1], shape[0], bias=bias is not None)
        else:
            groups = hyper["groups"]
            layer = nn.Conv2d(shape[1] * groups, shape[0], tuple(shape[2:]), bias=bias is not None,
                              **hyper)  # fmt: skip
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _rewrite_node(gm: fx.GraphModule, node: fx.Node, made: dict[str, tuple]) -> bool:
    spec = _layer_args(node)
    if spec is None or not node.args:
        return False
    kind, hyper = spec
    x_node, weight_node, bias_node, between = _call_args(node)
    path = _holder(gm, weight_node, "weight")
    if path is None or (bias_node is not None and _holder(gm, bias_node, "bias") != path):
        return False
    weight = gm.get_parameter(f"{path}.weight")
    if weight.dim() != (2 if kind == "linear" else 4):
        return False
    if bias_node is not None and tuple(gm.get_parameter(f"{path}.bias").shape) != weight.shape[:1]:
        return False
    key = (kind, tuple(sorted(hyper.items())), bias_node is not None)
    if path in made:
        if made[path] != key:
            return False
    else:
        holder = gm.get_submodule(path)
        names = {n for n, _ in holder.named_parameters(recurse=False)}
        if type(holder) is not nn.Module or list(holder.children()) or list(holder.buffers()):
            return False
        if names != ({"weight", "bias"} if bias_node is not None else {"weight"}):
            return False
        bias = gm.get_parameter(f"{path}.bias") if bias_node is not None else None
        gm.set_submodule(path, _make_layer(kind, weight, bias, hyper))
        made[path] = key
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (x_node,))
    call.meta.update(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    for attr in (*between, weight_node, bias_node):
        if isinstance(attr, fx.Node) and not attr.users:
            gm.graph.erase_node(attr)
    return True


def _constants_as_buffers(gm: fx.GraphModule) -> None:
    """Plain tensor attributes (lifted constants) become non-persistent buffers: they move with
    ``.to(device)``, and a copy of the module (FX registers them as persistent buffers
    otherwise) keeps them out of the state dict."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        path, _, field = str(node.target).rpartition(".")
        owner = gm.get_submodule(path)
        value = getattr(owner, field, None)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and field not in owner._buffers:
            delattr(owner, field)
            owner.register_buffer(field, value, persistent=False)


def to_layers(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` in place as the module docstring says and recompile; return it.

    ``ExportedProgram.module()`` makes ``train()`` / ``eval()`` raise; they are given back
    their ``nn.Module`` meaning (the flags only: the graph computes as it was exported, so a
    model exported in eval mode keeps eval batch norm and no dropout while it is fine-tuned);
    lifted constants become non-persistent buffers (:func:`_constants_as_buffers`)."""
    for method in ("train", "eval"):
        gm.__dict__.pop(method, None)
    _constants_as_buffers(gm)
    made: dict[str, tuple] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            _rewrite_node(gm, node, made)
    if made:
        gm.graph.lint()
        gm.recompile()
    return gm


def layer_paths(gm: fx.GraphModule) -> list[str]:
    """The module paths the rewrite turned into layers (``call_module`` targets that are
    ``nn.Linear`` / ``nn.Conv2d``)."""
    return [
        str(n.target) for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.Linear | nn.Conv2d)
    ]  # fmt: skip
