"""Export for deployment, and reading a user's ``torch.export`` program without pickle.

- :mod:`operators.export.deploy`: the deployable form of a packed model (plain layers, int8
  layers as int8 values + per-channel scales dequantised in the graph);
- :mod:`operators.export.formats`: :func:`export_onnx` (ONNX opset 18, int8 as QDQ),
  :func:`export_pt2` (``torch.export.save``) and :func:`export_checkpoint` (a packed
  checkpoint file to either);
- :mod:`operators.export.program`: :func:`read_program`, a ``.pt2`` archive checked entry by
  entry and loaded from its JSON graph and raw weights, never unpickling anything;
- :mod:`operators.export.rewrite`: :func:`to_layers`, the FX rewrite that turns an exported
  program's ``aten.linear`` / ``aten.conv2d`` calls into ``nn.Linear`` / ``nn.Conv2d`` layers
  (same state-dict keys) so the compression ops find them;
- :mod:`operators.export.source`: the ``export:<path>`` model source built on both (registered
  with :func:`operators.models.sources.register_source` on import; its packed checkpoints
  record the program's graph, so they rebuild without the archive).

ONNX needs the ``models`` extra (``pip install autocompress[models]``); without it
:class:`MissingExtra` says so. ``import operators`` imports this package (so the ``export``
source is registered); onnx and onnxscript are imported only when an ONNX file is written.
"""

from operators.export.deploy import Int8Dequant, deployable, load_deployable
from operators.export.formats import (
    FORMATS,
    ONNX_OPSET,
    MissingExtra,
    export_checkpoint,
    export_onnx,
    export_pt2,
    require_onnx,
)
from operators.export.program import load_program, program_input, read_program
from operators.export.rewrite import to_layers
from operators.export.source import allow_root

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "Int8Dequant",
    "MissingExtra",
    "allow_root",
    "deployable",
    "export_checkpoint",
    "export_onnx",
    "export_pt2",
    "load_deployable",
    "load_program",
    "program_input",
    "read_program",
    "require_onnx",
    "to_layers",
]
