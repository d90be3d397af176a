"""Writing a model for deployment: ONNX (opset 18) and ``.pt2`` (``torch.export``).

:func:`export_onnx` and :func:`export_pt2` write the :func:`~operators.export.deploy.deployable`
form of a model (weights in float32, int8 layers as int8 values plus per-channel scales) for
one input of shape ``(batch, *input_shape)``; the batch dimension is dynamic.

ONNX uses ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``, the
``models`` extra), which writes int8 layers as ``DequantizeLinear(int8 initializer,
per-axis scales)`` feeding the Gemm / Conv (QDQ on weights only; activations stay float).
If that exporter fails, the TorchScript exporter (``dynamo=False``, no constant folding) is
tried, with int8 layers dequantised by a plain ``Cast`` and ``Mul`` of the int8 initializer
(``exporter="torchscript"`` asks for it directly). :data:`LAST_ONNX_EXPORTER` records which
one wrote the last file. Measured on torch 2.14.1 (CPU) with onnxscript 0.7.2: the dynamo
exporter exports every packed kind (prune, fp16, filter_prune, int8 linear and conv,
cluster, MPD, lowrank); 1.5-3 s per small model.

``.pt2`` is ``torch.export.export`` then ``torch.export.save``; int8 layers dequantise with
plain ops, so the file loads with ``torch.export.load`` and no extra op library.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from operators.export.deploy import deployable, load_deployable
from operators.models.sources import INSTALL_HINT

FORMATS = ("onnx", "pt2")
ONNX_OPSET = 18
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")
INPUT_DTYPES = ("float32", "float16", "bfloat16")
LAST_ONNX_EXPORTER: dict[str, str] = {}
log = logging.getLogger(__name__)


class MissingExtra(RuntimeError):
    """An optional library (the ``models`` extra) is not installed."""


def require_onnx() -> None:
    """Raise :class:`MissingExtra` (naming the extra) unless onnx and onnxscript import."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(f"ONNX export needs {exc.name}: {INSTALL_HINT}") from None


def _example(input_shape: Sequence[int], input_dtype: str | torch.dtype) -> torch.Tensor:
    dtype = getattr(torch, input_dtype, None) if isinstance(input_dtype, str) else input_dtype
    if not isinstance(dtype, torch.dtype) or str(dtype).removeprefix("torch.") not in INPUT_DTYPES:
        raise ValueError(f"input_dtype: must be one of {', '.join(INPUT_DTYPES)}; got {input_dtype!r}")
    if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ValueError(f"input_shape: must be a list of positive integers; got {input_shape!r}")
    return torch.zeros(2, *input_shape, dtype=dtype)  # batch 2: 0/1 would be specialised


def _prepare(
    model: nn.Module, input_shape: Sequence[int], input_dtype: str | torch.dtype, qdq: bool
) -> tuple[nn.Module, torch.Tensor]:
    x = _example(input_shape, input_dtype)
    form = deployable(model, qdq=qdq)
    if x.dtype != torch.float32:
        for tensor in list(form.parameters()) + list(form.buffers()):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(x.dtype)
    return form, x


def _atomic(path: Path, write) -> int:
    """Run ``write(tmp)`` then rename ``tmp`` to ``path``; return the file's size.

    ``tmp`` has ``path``'s name inside a fresh hidden folder beside it (a ``.pt2`` archive
    takes its root folder's name from the file name); files written beside it (the external
    weights ``<name>.data`` of an ONNX model over 2 GB, which the model names relatively)
    are moved along, before the model itself."""
    path = Path(path)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        tmp = folder / path.name
        write(str(tmp))
        for extra in sorted(folder.iterdir()):
            if extra != tmp:
                os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path.stat().st_size


def _batch_dynamic() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch")},)


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    input_dtype: str | torch.dtype = "float32",
    path: Path = Path("model.onnx"),
    *,
    exporter: str = "auto",
) -> int:
    """Write ``model`` as ONNX (opset :data:`ONNX_OPSET`, input ``input``, output ``output``)
    to ``path``; return the file's size. :class:`MissingExtra` without onnx / onnxscript.

    ``exporter``: ``"auto"`` (dynamo, else TorchScript), ``"dynamo"`` or ``"torchscript"``."""
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"exporter: must be one of {', '.join(ONNX_EXPORTERS)}; got {exporter!r}")
    require_onnx()

    def dynamo(tmp: str) -> None:
        form, x = _prepare(model, input_shape, input_dtype, qdq=True)
        program = torch.onnx.export(
            form, (x,), None, dynamo=True, opset_version=ONNX_OPSET, dynamic_shapes=_batch_dynamic(),
            input_names=["input"], output_names=["output"], verbose=False,
        )  # fmt: skip
        program.save(tmp)

    def torchscript(tmp: str) -> None:
        form, x = _prepare(model, input_shape, input_dtype, qdq=False)
        torch.onnx.export(
            form, (x,), tmp, dynamo=False, opset_version=ONNX_OPSET, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=False,  # folding would turn the int8 weights into float32
        )  # fmt: skip

    if exporter != "torchscript":
        try:
            size = _atomic(path, dynamo)
            LAST_ONNX_EXPORTER["name"] = "dynamo"
            return size
        except ValueError:
            raise
        except Exception as exc:  # the exporter's own errors have no common base class
            if exporter == "dynamo":
                raise
            log.warning("dynamo ONNX export failed (%s); trying the TorchScript exporter", exc)
    size = _atomic(path, torchscript)
    LAST_ONNX_EXPORTER["name"] = "torchscript"
    return size


def export_pt2(
    model: nn.Module,
    input_shape: Sequence[int],
    input_dtype: str | torch.dtype = "float32",
    path: Path = Path("model.pt2"),
) -> int:
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``) to ``path``;
    return the file's size."""
    form, x = _prepare(model, input_shape, input_dtype, qdq=False)
    program = torch.export.export(form, (x,), dynamic_shapes=_batch_dynamic())
    return _atomic(path, lambda tmp: torch.export.save(program, tmp))


def export_checkpoint(
    checkpoint: Path,
    fmt: str,
    output: Path,
    *,
    input_shape: Sequence[int] | None = None,
    input_dtype: str = "float32",
) -> int:
    """Export the packed checkpoint file ``checkpoint`` as ``fmt`` (one of :data:`FORMATS`)
    to ``output``; ``input_shape`` defaults to the one the checkpoint records."""
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if fmt == "onnx":  # fail before loading anything when the extra is missing
        require_onnx()
    model, manifest = load_deployable(checkpoint)
    shape = input_shape if input_shape is not None else manifest.get("input_shape")
    if shape is None:
        raise ValueError("input_shape: the checkpoint records none; give the per-sample shape")
    writer = export_onnx if fmt == "onnx" else export_pt2
    return writer(model, list(shape), input_dtype, Path(output))
