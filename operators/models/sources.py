"""Model sources: the one registry that turns an ``architecture`` string and a JSON config into a
freshly initialised ``nn.Module``; the API, the workers, the checkpoint and the CLI all build here.

An architecture is ``source:name``; a bare name is a zoo name (``mlp`` is ``zoo:mlp``):

- ``zoo:<name>``: the project's zoo (:mod:`operators.models.zoo`), config = its keyword arguments.
- ``timm:<model_name>``: ``timm.create_model(model_name, pretrained=False, **config)``;
  ``pretrained``, ``checkpoint_path``, ``pretrained_cfg*``, ``cache_dir`` and
  ``features_only`` are refused: nothing is ever downloaded or unpickled.
- ``hf:<task>`` (``image-classification``, ``sequence-classification``,
  ``audio-classification``): config = a Hugging Face ``config.json`` object whose
  ``model_type`` is built into transformers; built with ``AutoConfig.for_model`` and the task's
  ``AutoModelFor<Task>.from_config``. ``auto_map``, ``trust_remote_code``, ``backbone`` and
  ``use_pretrained_backbone`` (custom code, or weights and configs from the hub) are refused
  anywhere in the config. ``forward(x)`` returns the logits tensor (see :func:`_logits_class`).
- ``torchvision:<name>``: ``torchvision.models.get_model(name, weights=None, **config)`` where
  torchvision imports; where it does not, a :class:`MissingLibrary` naming it.
- ``export:...``: registered by the export package with :func:`register_source` (the hook).

A source whose ``build`` needs something outside ``(name, config)`` (the ``export`` source reads
an archive on the server) registers a ``record`` function: :func:`portable_config` gives the
config a packed checkpoint stores, self-contained, so ``build(architecture, that config)``
rebuilds the model anywhere (for ``export``: the program's graph JSON, no path).

timm and transformers are imported inside the source functions: ``import operators`` works
without them, and a missing one is a :class:`MissingLibrary` error naming
``pip install autocompress[models]``.

:func:`model_info` builds on the meta device (nothing allocated), so a model can be sized and
refused (``max_params``) before a single weight exists. The input a model takes per sample
(``input_shape``, ``input_dtype``) is implied by zoo, timm and HF image configs and must be given
for the others; :func:`record_config` / :func:`split_record_config` keep it with the config in
one JSON object (reserved key :data:`INPUT_KEY`).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from operators.models import zoo

INSTALL_HINT = "pip install autocompress[models]"
INPUT_KEY = "__input__"
INPUT_DTYPES = ("float32", "int64")


class SourceError(ValueError):
    """A model that cannot be built as asked; ``field`` names what is at fault
    (``architecture``, ``config`` or ``config.<key>``, ``input_shape``, ``key_map``, ``weights``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class MissingLibrary(SourceError):
    """The source's library is not installed (or does not import) here."""

    def __init__(self, kind: str, library: str, hint: str = INSTALL_HINT) -> None:
        super().__init__(
            "architecture", f"the {kind!r} source needs {library}, which is not importable here; "
            f"install it: {hint}",
        )  # fmt: skip


Builder = Callable[[str, dict], nn.Module]
InputRule = Callable[[str, dict], "tuple[list[int] | None, str]"]


@dataclass(frozen=True)
class Source:
    """One kind of model source: how to check a config, build a model, and what input it takes.

    ``check(name, config)`` raises :class:`SourceError` without building anything heavy;
    ``build(name, config)`` returns a freshly initialised model (respecting the current default
    device, so it can run under ``torch.device("meta")``); ``default_input(name, config)`` gives
    ``(input_shape or None, input_dtype)`` per sample; ``record(name, config)``, where given,
    the self-contained config that a checkpoint stores (see :func:`portable_config`);
    ``refused_ops``: op name -> why that op cannot run on this source's models (a job naming
    it is refused at submission, see :func:`refused_ops`).
    """

    kind: str
    build: Builder
    check: Callable[[str, dict], None]
    default_input: InputRule
    description: str = ""
    record: Callable[[str, dict], dict] | None = None
    refused_ops: dict[str, str] = field(default_factory=dict)


def _no_check(name: str, config: dict) -> None:
    return None


def _no_input(name: str, config: dict) -> tuple[list[int] | None, str]:
    return None, "float32"


SOURCES: dict[str, Source] = {}


def register_source(
    kind: str,
    build: Builder,
    *,
    check: Callable[[str, dict], None] | None = None,
    default_input: InputRule | None = None,
    description: str = "",
    record: Callable[[str, dict], dict] | None = None,
    refused_ops: dict[str, str] | None = None,
) -> Source:
    """Register (or replace) the source ``kind``: ``<kind>:<name>`` then builds with ``build``.

    This is the hook for sources outside this module (the ``export`` source of torch.export
    archives registers itself here)."""
    source = Source(kind, build, check or _no_check, default_input or _no_input, description, record,
                    dict(refused_ops or {}))  # fmt: skip
    SOURCES[kind] = source
    return source


def split_architecture(architecture: Any) -> tuple[Source, str]:
    """``(source, name)`` of ``"kind:name"``; a bare name is a zoo name."""
    if not isinstance(architecture, str) or not architecture:
        raise SourceError("architecture", f"must be a non-empty string, got {architecture!r}")
    kind, sep, name = architecture.partition(":")
    if not sep:
        kind, name = "zoo", architecture
    if kind not in SOURCES:
        raise SourceError(
            "architecture",
            f"unknown model source {kind!r} in {architecture!r}; allowed: "
            f"{', '.join(f'{k}:<name>' for k in SOURCES)} (a bare name is a zoo name)",
        )
    if not name:
        raise SourceError("architecture", f"{architecture!r}: the name after '{kind}:' is empty")
    return SOURCES[kind], name


def _check_config(config: Any) -> dict:
    if not isinstance(config, dict):
        raise SourceError("config", f"must be an object of keyword arguments, got {config!r}")
    if INPUT_KEY in config:
        raise SourceError(f"config.{INPUT_KEY}", "is reserved; give input_shape / input_dtype")
    return config


def check(architecture: str, config: dict) -> tuple[Source, str]:
    """Validate ``architecture`` and ``config`` without building; returns ``(source, name)``."""
    source, name = split_architecture(architecture)
    source.check(name, _check_config(config))
    return source, name


def portable_config(architecture: str, config: dict) -> dict:
    """The config to record with a model built from ``architecture`` / ``config`` so that
    :func:`build` rebuilds it with nothing else: ``config`` itself, or what the source's
    ``record`` hook gives (a SourceError where the source cannot record it)."""
    source, name = check(architecture, config)
    return config if source.record is None else source.record(name, config)


def refused_ops(architecture: str) -> dict[str, str]:
    """Op name -> the reason the source of ``architecture`` cannot take that op ({} for most)."""
    return dict(split_architecture(architecture)[0].refused_ops)


def build(architecture: str, config: dict) -> nn.Module:
    """A freshly initialised model of ``architecture`` (``source:name`` or a zoo name) built
    from ``config``; raises :class:`SourceError` (a ValueError) naming the field at fault."""
    source, name = check(architecture, config)
    return source.build(name, config)


@dataclass(frozen=True)
class ModelInfo:
    """What a model is, known without allocating it: source, parameter count, input."""

    architecture: str
    kind: str
    name: str
    params: int
    input_shape: list[int] | None
    input_dtype: str
    state_shapes: dict[str, tuple[int, ...]] = field(repr=False, default_factory=dict)


def check_input(input_shape: Any, input_dtype: Any) -> None:
    """Raise :class:`SourceError` unless ``input_shape`` is None or a list of positive ints and
    ``input_dtype`` is None or one of :data:`INPUT_DTYPES`."""
    if input_shape is not None and not (
        isinstance(input_shape, list) and input_shape and len(input_shape) <= 8
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 20
                for d in input_shape)
    ):  # fmt: skip
        raise SourceError(
            "input_shape", f"must be a list of 1 to 8 positive integers (per sample, e.g. "
            f"[3, 32, 32] or [128]), got {input_shape!r}",
        )  # fmt: skip
    if input_dtype is not None and input_dtype not in INPUT_DTYPES:
        raise SourceError(
            "input_dtype", f"must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}"
        )


def model_info(
    architecture: str,
    config: dict,
    *,
    input_shape: list[int] | None = None,
    input_dtype: str | None = None,
    max_params: int | None = None,
    need_input: bool = True,
) -> ModelInfo:
    """Build on the meta device (no memory, no initialisation), count the parameters, refuse a
    model above ``max_params``, and settle the per-sample input (given, else the source's; a
    Hugging Face model that implies none is refused unless ``need_input`` is False, for
    callers that only size the model or check weights)."""
    check_input(input_shape, input_dtype)
    source, name = check(architecture, config)
    with torch.device("meta"):
        model = source.build(name, config)
    params = sum(p.numel() for p in model.parameters())
    if max_params is not None and params > max_params:
        raise SourceError(
            "config", f"{architecture} with this config has {params:,} parameters, more than "
            f"the limit of {int(max_params):,}; nothing was allocated",
        )  # fmt: skip
    shape, dtype = source.default_input(name, config)
    shape = input_shape if input_shape is not None else shape
    dtype = input_dtype or dtype
    if need_input and source.kind == "hf" and shape is None:
        raise SourceError(
            "input_shape", f"{architecture} ({config.get('model_type')}) implies no input shape: "
            "give input_shape per sample, e.g. [128] for token ids (with input_dtype int64)",
        )  # fmt: skip
    return ModelInfo(
        architecture, source.kind, name, params, shape, dtype,
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
    )  # fmt: skip


def record_config(config: dict, input_shape: list[int] | None, input_dtype: str) -> dict:
    """The config as stored with a model record: the keyword arguments plus the input spec."""
    return {**config, INPUT_KEY: {"shape": input_shape, "dtype": input_dtype}}


def split_record_config(stored: dict) -> tuple[dict, list[int] | None, str]:
    """``(config, input_shape, input_dtype)`` of a stored config (older records have no spec)."""
    config = dict(stored)
    spec = config.pop(INPUT_KEY, None) or {}
    return config, spec.get("shape"), spec.get("dtype") or "float32"


# -- zoo --------------------------------------------------------------------------------------

_ZOO_INPUT = {"lenet-300-100": "in_features", "mlp": "in_features"}


def _zoo_check(name: str, config: dict) -> None:
    try:
        allowed = zoo.config_keys(name)
    except ValueError as exc:
        raise SourceError("architecture", str(exc)) from None
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise SourceError("config", f"unknown key(s) {', '.join(map(repr, unknown))} for "
                          f"{name}; allowed: {', '.join(allowed)}")  # fmt: skip


def _zoo_build(name: str, config: dict) -> nn.Module:
    try:
        return zoo.build_model(name, config)
    except (TypeError, ValueError) as exc:
        raise SourceError("config", str(exc)) from None


def _zoo_input(name: str, config: dict) -> tuple[list[int] | None, str]:
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(zoo.ARCHITECTURES[name]).parameters.items()}
    merged = {**defaults, **config}
    if name in _ZOO_INPUT:
        return [merged[_ZOO_INPUT[name]]], "float32"
    side = merged.get("image_size", 32)
    return [merged["in_channels"], side, side], "float32"


register_source("zoo", _zoo_build, check=_zoo_check, default_input=_zoo_input,
                description="the project's zoo: " + ", ".join(zoo.ARCHITECTURES))  # fmt: skip


# -- timm -------------------------------------------------------------------------------------

TIMM_REFUSED = {
    "pretrained": "nothing is downloaded: upload your trained weights instead",
    "checkpoint_path": "weights come only as the uploaded safetensors file",
    "pretrained_cfg": "pretrained configs may point at downloads",
    "pretrained_cfg_overlay": "pretrained configs may point at downloads",
    "cache_dir": "nothing is downloaded",
    "features_only": "a classifier with one logits output is needed",
}


def _timm():
    try:
        import timm
    except Exception:  # ImportError, or a broken install that fails while importing
        raise MissingLibrary("timm", "timm") from None
    return timm


def _timm_check(name: str, config: dict) -> None:
    for key, why in TIMM_REFUSED.items():
        if key in config and (key != "pretrained" or config[key] is not False):
            raise SourceError(f"config.{key}", f"refused: {why}")
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise SourceError(
            "architecture", f"unknown timm model {name!r}{hint} (timm.list_models() lists "
            "them; nothing was downloaded)",
        )  # fmt: skip


def _timm_build(name: str, config: dict) -> nn.Module:
    timm = _timm()
    kwargs = {k: v for k, v in config.items() if k != "pretrained"}
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise SourceError("config", f"timm cannot build {name} with {config}: {exc}") from None


def _timm_input(name: str, config: dict) -> tuple[list[int] | None, str]:
    cfg = _timm().get_pretrained_cfg(name)
    size = list((cfg.input_size if cfg is not None else None) or (3, 224, 224))
    channels = config.get("in_chans", size[0])
    side = config.get("img_size", size[1:])
    side = [side, side] if isinstance(side, int) else list(side)
    return [channels, *side], "float32"


register_source("timm", _timm_build, check=_timm_check, default_input=_timm_input,
                description="timm.create_model(name, pretrained=False, **config)")  # fmt: skip


# -- Hugging Face transformers ----------------------------------------------------------------

HF_TASKS = {  # task -> (Auto class, name of its model-type mapping in modeling_auto)
    "image-classification": ("AutoModelForImageClassification",
                             "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    "sequence-classification": ("AutoModelForSequenceClassification",
                                "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    "audio-classification": ("AutoModelForAudioClassification",
                             "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"),
}  # fmt: skip
HF_REFUSED = {
    "auto_map": "custom model code is never run",
    "trust_remote_code": "custom model code is never run",
    "backbone": "names a checkpoint on the hub; give the backbone's config inline",
    "use_pretrained_backbone": "pretrained backbones are downloads",
}


def _transformers():
    try:
        import transformers
        from transformers.models.auto import modeling_auto
    except Exception:
        raise MissingLibrary("hf", "transformers") from None
    return transformers, modeling_auto


def _refused_keys(obj: Any, path: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{path}.{key}"
            refused = key in HF_REFUSED and not (
                key in ("use_pretrained_backbone", "trust_remote_code") and value is False
            ) and not (key == "backbone" and value is None)
            if refused:
                raise SourceError(here, f"refused: {HF_REFUSED[key]}")
            _refused_keys(value, here)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _refused_keys(value, f"{path}[{i}]")


def _hf_check(task: str, config: dict) -> None:
    if task not in HF_TASKS:
        raise SourceError("architecture", f"unknown Hugging Face task {task!r}; allowed: "
                          f"{', '.join(f'hf:{t}' for t in HF_TASKS)}")  # fmt: skip
    _refused_keys(config, "config")
    _transformers_lib, modeling_auto = _transformers()
    supported = getattr(modeling_auto, HF_TASKS[task][1])
    model_type = config.get("model_type")
    if model_type not in supported:
        raise SourceError(
            "config.model_type", f"must be a model type transformers builds for {task}, got "
            f"{model_type!r}; allowed: {', '.join(sorted(supported))}",
        )  # fmt: skip


def _hf_config(config: dict) -> Any:
    transformers, _ = _transformers()
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    try:
        return transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise SourceError("config", f"not a valid {config['model_type']} config: {exc}") from None


def _hf_build(task: str, config: dict) -> nn.Module:
    transformers, _ = _transformers()
    auto = getattr(transformers, HF_TASKS[task][0])
    hf_config = _hf_config(config)
    attn = config.get("attn_implementation", "eager")  # plain ops: every op and tracer sees them
    try:
        model = auto.from_config(hf_config, attn_implementation=attn)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise SourceError("config", f"transformers cannot build {task} from it: {exc}") from None
    model.__class__ = _logits_class(type(model))
    return model.float()


@functools.cache
def _logits_class(base: type) -> type:
    """A subclass of the Hugging Face model class whose ``forward(x)`` returns the logits tensor.

    The instance keeps its own state-dict names (``vit.embeddings...``), so the weights of the
    Hugging Face model load as they are. Token-id models take their ids as floats too (the
    datasets hold float32): they are rounded and clamped into the vocabulary."""
    main = getattr(base, "main_input_name", "input_ids")

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if main == "input_ids" and x.is_floating_point():
            x = x.round().long().clamp_(0, self.config.vocab_size - 1)
        kwargs.setdefault("return_dict", True)
        return base.forward(self, *args, **{main: x}, **kwargs).logits

    return type(base.__name__, (base,), {"forward": forward, "__module__": __name__,
                                         "__qualname__": f"logits[{base.__qualname__}]"})  # fmt: skip


def _hf_input(task: str, config: dict) -> tuple[list[int] | None, str]:
    if task == "image-classification":
        hf_config = _hf_config(config)
        side = getattr(hf_config, "image_size", None)
        channels = getattr(hf_config, "num_channels", 3)
        if side is None:
            return None, "float32"
        side = [side, side] if isinstance(side, int) else list(side)
        return [channels, *side], "float32"
    if task == "sequence-classification":
        return None, "int64"
    return None, "float32"


register_source("hf", _hf_build, check=_hf_check, default_input=_hf_input,
                description="Hugging Face transformers: hf:<task>, config = config.json")  # fmt: skip


# -- torchvision ------------------------------------------------------------------------------

TORCHVISION_REFUSED = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def _torchvision():
    try:
        import torchvision.models
    except Exception:  # PyPI's torchvision may fail to import beside another torch build
        raise MissingLibrary(
            "torchvision", "torchvision", "pip install torchvision (built for this torch)"
        ) from None
    return torchvision.models


def _torchvision_check(name: str, config: dict) -> None:
    for key in TORCHVISION_REFUSED:
        if config.get(key) not in (None, False):
            raise SourceError(f"config.{key}", "refused: nothing is downloaded")
    models = _torchvision()
    if name not in models.list_models():
        raise SourceError("architecture", f"unknown torchvision model {name!r}")


def _torchvision_build(name: str, config: dict) -> nn.Module:
    models = _torchvision()
    kwargs = {k: v for k, v in config.items() if k not in TORCHVISION_REFUSED}
    try:
        return models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SourceError("config", f"torchvision cannot build {name}: {exc}") from None


register_source("torchvision", _torchvision_build, check=_torchvision_check,
                default_input=lambda name, config: ([3, 224, 224], "float32"),
                description="torchvision.models.get_model(name, weights=None, **config)")  # fmt: skip


def allowed_sources() -> Sequence[str]:
    """The registered source kinds, for messages and documentation."""
    return tuple(SOURCES)
