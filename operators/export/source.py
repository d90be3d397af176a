"""The ``export:`` model source: ``export:<path>`` is a user's ``torch.export.save`` archive.

Registered in :data:`operators.models.sources.SOURCES` when :mod:`operators.export` is
imported. The model is the archive's program read by :func:`operators.export.program.
load_program` (no pickle, every entry checked); its per-sample input comes from the program's
signature; ``config`` must be empty (the program fixes the architecture).

A path is read only inside a root the embedding code allowed with :func:`allow_root` (the
service allows its artifact and data roots); with none allowed every ``export:`` model is
refused. The archive carries its own weights, which ``build`` loads; a module of a
``torch.export`` program is a graph of ATen calls, not ``nn.Linear`` / ``nn.Conv2d`` modules,
so the compression ops find no layers to compress in it (it runs, evaluates and exports).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from operators.export.program import load_program, program_input
from operators.models.sources import SourceError, register_source

ROOTS: list[Path] = []


def allow_root(root: Path) -> None:
    """Let ``export:`` paths under ``root`` be read."""
    resolved = Path(root).resolve()
    if resolved not in ROOTS:
        ROOTS.append(resolved)


def archive_path(name: str) -> Path:
    """The resolved archive of ``export:<name>``; SourceError unless inside an allowed root."""
    path = Path(name).resolve()
    if not any(path.is_relative_to(root) for root in ROOTS):
        raise SourceError("architecture", f"export:{name}: not inside an allowed root "
                          f"({', '.join(map(str, ROOTS)) or 'none allowed'})")  # fmt: skip
    if not path.is_file():
        raise SourceError("architecture", f"export:{name}: no such file")
    return path


def _check(name: str, config: dict) -> None:
    if config:
        raise SourceError("config", "must be {} for an export: model (the program fixes it)")
    archive_path(name)


def _load(name: str):
    try:
        return load_program(archive_path(name))
    except ValueError as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError("architecture", f"export:{name}: {exc}") from None


def _build(name: str, config: dict) -> nn.Module:
    return _load(name).module()


def _input(name: str, config: dict) -> tuple[list[int] | None, str]:
    return program_input(_load(name))


register_source("export", _build, check=_check, default_input=_input,
                description="a torch.export.save archive (.pt2), read without pickle")  # fmt: skip
