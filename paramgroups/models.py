"""Resolving model names, factories and checkpoint files to modules, offline.

Models are built without weights (``weights=None`` / ``pretrained=False``), on the meta device
unless asked otherwise, so inspecting even a very large model allocates nothing. torchvision
and timm are imported only when a name needs them: each costs seconds.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .errors import ModelError
from .inventory import canonical_name, saved_ddp_prefixes
from .values import did_you_mean

if TYPE_CHECKING:
    from .inventory import ParamRecord
    from .plan import Plan
    from .rules import Rule

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_state")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", torch.uint8),
    "F8_E5M2": getattr(torch, "float8_e5m2", torch.uint8),
}


class CheckpointModule(nn.Module):
    """A module rebuilt from checkpoint keys: it holds parameters with the saved shapes."""


class CheckpointBatchNorm(CheckpointModule):
    """A checkpoint module that carried running statistics: a normalization layer."""


def build_model(spec: str, *, num_classes: int | None = None,
                device: str | torch.device = "meta",
                config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build ``spec``: a torchvision/timm name, ``timm:NAME``, ``torchvision:NAME``,
    ``package.module:factory``, a checkpoint file (``.pt``, ``.pth``, ``.safetensors``), or a
    Hugging Face model: ``hf:TYPE`` (``hf:llama``), a ``save_pretrained`` folder, its
    ``config.json``, or a sharded checkpoint's ``*.index.json``. ``config`` overrides values of
    a Hugging Face model's config (``{"num_hidden_layers": 2}``).

    A bare word that is both a known model name and a file or folder in the working directory
    means the model (``mkdir resnet18`` does not shadow it); write ``./resnet18`` for the path.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"model must be a name or a file, got {spec!r}")
    from . import hf_models

    is_path = _is_path(spec)
    if spec.startswith(hf_models.HF_PREFIX) or (is_path and hf_models.is_hf_path(spec)):
        return hf_models.build_hf_model(spec, config=config, num_classes=num_classes, device=device)
    if config:
        raise ModelError(f"{spec}: config overrides apply only to Hugging Face models (hf:TYPE, "
                         f"a save_pretrained folder or its config.json)")
    if is_path:
        return load_checkpoint_model(spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "timm":
        return _on_device(lambda: _timm_model(rest, kwargs), device, spec)
    if sep and prefix == "torchvision":
        return _on_device(lambda: _torchvision_model(rest, kwargs), device, spec)
    if sep:
        return _on_device(lambda: _factory(prefix, rest, kwargs), device, spec)
    return _on_device(lambda: _named_model(spec, kwargs), device, spec)


def _is_path(spec: str) -> bool:
    """Whether ``spec`` means a file: a checkpoint suffix, an explicit path (``./x``, ``a/b``,
    ``~/x``), or an existing path whose bare name is no known model name."""
    if spec.lower().endswith(CHECKPOINT_SUFFIXES):
        return True
    if "/" in spec or "\\" in spec or spec.startswith((".", "~")):
        return True
    return ":" not in spec and Path(spec).exists() and not _known_name(spec)


def _known_name(name: str) -> bool:
    if name in _torchvision_names():
        return True
    import timm

    return timm.is_model(name)


def _on_device(build: Callable[[], nn.Module], device: str | torch.device, spec: str) -> nn.Module:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"invalid device {device!r}: {exc}") from None
    try:
        model = _construct(build, device)
    except ModelError:
        raise
    except TypeError as exc:
        raise ModelError(f"cannot build {spec!r}: {exc}") from None
    except Exception as exc:  # a third-party constructor failing is bad input, not our bug
        raise ModelError(f"building {spec!r} on {device} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    lazy = next((n for n, p in model.named_parameters() if is_lazy(p)), None)
    if lazy is None:
        lazy = next((n for n, b in model.named_buffers() if is_lazy(b)), None)
    if lazy is not None:
        raise ModelError(f"{spec!r} has uninitialized lazy modules ({lazy!r} has no shape yet): "
                         f"give the layer its input size (nn.Linear instead of nn.LazyLinear), "
                         f"or run one forward pass in the factory before returning the model")
    return model


def _construct(build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    """``build()`` with tensors created on ``device``. A constructor that computes with tensors
    (torchvision's RegNet reads widths back with ``.tolist()``) cannot run with every tensor on
    meta; it is built again with only its parameters and buffers moved there."""
    try:
        with device:
            return build()
    except NotImplementedError as exc:
        if device.type != "meta" or "meta" not in str(exc):
            raise
    with _registered_on_meta():
        return build()


@contextmanager
def _registered_on_meta() -> Iterator[None]:
    """Move every parameter and buffer to meta as it is registered: each exists on the CPU
    only between its creation and its registration, uninitialized."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer  # type: ignore[method-assign]


def _torchvision_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models())


def _torchvision_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    if name not in _torchvision_names():
        raise ModelError(f"unknown torchvision model {name!r}{_close(name, _torchvision_names())}")
    return torchvision.models.get_model(name, **_torchvision_offline(name), **kwargs)


def _torchvision_offline(name: str) -> dict[str, Any]:
    """``weights=None`` and ``None`` for every other ``weights_*`` argument the builder takes:
    detection and segmentation models otherwise download an ImageNet backbone. (Built so,
    their backbones use BatchNorm2d and train every layer, as torchvision builds them from
    scratch; with pretrained backbones it would use FrozenBatchNorm2d.)"""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    params = inspect.signature(builder).parameters
    return {k: None for k in params if k == "weights" or k.startswith("weights_")}


def _timm_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{_close(name, timm.list_models())}")
    return timm.create_model(name, pretrained=False, **kwargs)


def _named_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name in _torchvision_names():
        return _torchvision_model(name, kwargs)
    import timm

    if timm.is_model(name):
        return _timm_model(name, kwargs)
    names = _torchvision_names() + [f"timm:{n}" for n in timm.list_models()]
    raise ModelError(f"unknown model {name!r}{_close(name, names)} "
                     f"(see `paramgroups models`; a factory is written package.module:function)")


def _factory(module_name: str, attr: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # also '' and relative names
        raise ModelError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r}")
    return factory(**kwargs)


def _close(name: str, names: list[str]) -> str:
    """``; did you mean a, b?`` (up to three names close to ``name``) to end a message, or ``""``."""
    close = did_you_mean(name, names, n=3)
    return f"; {close}" if close else ""


def list_models(text: str | None = None) -> list[str]:
    """Model names ``build_model`` takes: torchvision's, then timm's as ``timm:NAME``."""
    import timm

    names = _torchvision_names() + [f"timm:{n}" for n in timm.list_models()]
    if text:
        names = [n for n in names if text.lower() in n.lower()]
    return names


# -- checkpoints -------------------------------------------------------------------------


def load_checkpoint_model(path: str | Path) -> nn.Module:
    """A module whose parameters mirror a checkpoint's floating-point tensors.

    Norm running statistics are left out, so a ResNet's state dict audits like the model.
    Nothing is executed: pickles load with ``weights_only=True`` and tensors stay on the
    meta device (only names, shapes and dtypes are read).
    """
    return module_from_shapes(read_checkpoint_shapes(path), str(path))


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a checkpoint")
    return path


def read_checkpoint_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of every tensor in a checkpoint, without running code."""
    path = _checked_path(path)
    if path.suffix.lower() == ".safetensors":
        return _safetensors_shapes(path)
    state = _torch_load(path)
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items() if isinstance(v, torch.Tensor)}


class SafetensorsFile(Mapping):
    """A read-only mapping over a .safetensors file that loads one tensor at a time."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._file.keys())
        except Exception as exc:
            raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._file.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def open_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """The checkpoint's state dict, read lazily: memory-mapped .pt, or safetensors one
    tensor at a time, so comparing checkpoints of several GB needs little memory."""
    path = _checked_path(path)
    if path.suffix.lower() == ".safetensors":
        return SafetensorsFile(path)
    return _torch_load(path, map_location="cpu", mmap=True)


def _safetensors_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out = {}
            for key in f.keys():
                sl = f.get_slice(key)
                out[key] = (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.uint8))
            return out
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except Exception as exc:  # safetensors raises its own SafetensorError and OSErrors
        raise ModelError(f"{path}: not a valid safetensors file ({exc})") from None


def _refuse_text(path: Path) -> None:
    """A JSON, YAML or TOML file is no checkpoint: say what it probably is and what to pass."""
    try:
        with path.open("rb") as f:
            head = f.read(2**20)
    except OSError:
        return  # torch.load reports it
    text_suffix = path.suffix.lower() in (".json", ".yaml", ".yml", ".toml")
    if not text_suffix and head.lstrip()[:1] not in (b"{", b"["):
        return
    if b'"weight_map"' in head:  # inspect builds the model from it; diff needs tensors
        raise ModelError(f"{path}: not a checkpoint but the index of a sharded checkpoint: compare "
                         f"its shard files (the .safetensors it lists) one by one")
    raise ModelError(f"{path}: not a checkpoint but a text file (a model config or a plan?): a "
                     f"plan goes to --rules; for a model config pass a package.module:factory "
                     f"that builds the model from it")


def _torch_load(path: Path, map_location: str = "meta", mmap: bool = False) -> dict[str, Any]:
    _refuse_text(path)
    try:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if not mmap or "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # plain corruption, not a refused pickle
            raise ModelError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
        raise ModelError(f"{path}: refused to load: it holds objects other than tensors and "
                         f"plain containers, and paramgroups never executes code from a "
                         f"checkpoint (save a state_dict, or use safetensors)") from None
    except Exception as exc:  # zip, EOF and runtime errors of a corrupt file
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                         f"{_first_line(exc)})") from None
    return _find_state_dict(obj, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "corrupt"


def _find_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:  # a training checkpoint: {"model_state_dict": ..., "loss": tensor}
            inner = obj.get(key)
            if isinstance(inner, dict):
                return _find_state_dict(inner, path)
        if obj and any(isinstance(v, torch.Tensor) for v in obj.values()):
            bad = next((k for k in obj if not isinstance(k, str)), None)
            if bad is not None:
                raise ModelError(f"{path}: state-dict key {bad!r} is not a name (keys must be strings)")
            return obj
    raise ModelError(f"{path}: holds no state dict (a mapping of names to tensors, or a "
                     f"checkpoint with one under {', '.join(_NESTED_KEYS)})")


def module_from_shapes(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]],
                       source: str) -> nn.Module:
    """Rebuild a module tree whose parameters have the given names, shapes and dtypes."""
    ddp = saved_ddp_prefixes(shapes)  # saved from a DDP wrapper: drop its ``module.``
    # keys carry no classes: compile/FSDP/checkpoint wrapper segments go by name
    shapes = {canonical_name(k, ddp): v for k, v in shapes.items()}
    root = CheckpointModule()
    norm_modules = {k.rpartition(".")[0] for k in shapes if k.rpartition(".")[2] in NORM_BUFFERS}
    kept = {k: v for k, v in shapes.items()
            if k.rpartition(".")[2] not in NORM_BUFFERS and (v[1].is_floating_point or v[1].is_complex)}
    if not kept:
        raise ModelError(f"{source}: has no floating-point tensors to audit")
    for key, (shape, dtype) in kept.items():
        *path, leaf = key.split(".")
        module = root
        try:
            for i, part in enumerate(path):
                child = getattr(module, part, None) if part in module._modules else None
                if child is None:
                    prefix = ".".join(path[: i + 1])
                    cls = CheckpointBatchNorm if prefix in norm_modules else CheckpointModule
                    child = cls()
                    module.add_module(part, child)
                module = child
            tensor = torch.empty(shape, dtype=dtype, device="meta")
            module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=True))
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise ModelError(f"{source}: checkpoint key {key!r} is not a usable parameter name ({exc})") from None
    return root


def checkpoint_blind_spots(plan: Plan, model: nn.Module, *, freezing_only: bool = False) -> list[str]:
    """Where ``plan`` selects by something a module rebuilt from a checkpoint cannot tell, one
    message per rule (empty for any other module).

    A checkpoint has names and shapes, and marks BatchNorm layers by their running statistics;
    it has no classes. So ``modules`` cannot be decided, nor ``kinds: embedding`` for a 2-d
    weight alone in its layer (nn.Embedding, or nn.Linear without bias), nor ``kinds: norm``
    (or ``norm_trainable``) for a layer without statistics whose parameters are all 1-d
    (LayerNorm, RMSNorm, or some scale), nor ``kinds: head`` or ``matrix`` for a 2-d weight or
    a bias (which layer is the output layer is a guess on a checkpoint: the last one holding a
    matrix, and safetensors sorts its keys). Resolved on the checkpoint, such a rule would quietly
    give those parameters other values than on the model. ``freezing_only`` looks only at what
    decides frozen state (rules that set ``freeze``, ``norm_trainable``) and at rules that
    would match nothing on the checkpoint, as ``diff`` needs.
    """
    from .inventory import inventory
    from .names import NameTable
    from .patterns import PatternList

    if not isinstance(model, CheckpointModule):
        return []
    records = inventory(model)
    table = NameTable.of(records)
    out = []
    rules = plan.all_rules
    texts = plan.rule_texts(rules)
    for i, rule in enumerate(rules):
        if rule.modules is None and rule.within is None and rule.kinds is None:
            continue
        if freezing_only and rule.freeze is None and (
                rule.optional or rule.select(records, table)):
            continue  # sets no frozen state, and selects something (else: "matches no parameter")
        doubt = next(filter(None, (_doubt(rule, records[k]) for k in
                                   table.select(PatternList(rule.match)))), None)
        if doubt is not None:
            where = rule.where(i) if i < len(plan.rules) else texts[i][0]  # loraplus, no_decay
            by = " and ".join(f"{f} {getattr(rule, f)!r}" for f in ("modules", "within", "kinds")
                              if getattr(rule, f) is not None)
            out.append(f"{where}: selects by {by}, which a checkpoint cannot tell ({doubt})")
    if plan.norm_trainable:
        unsure = next((r.name for r in records if "norm" in _possible_kinds(r)), None)
        if unsure is not None:
            out.append(f"norm_trainable: needs to know the norm layers, which a checkpoint cannot "
                       f"tell (is {unsure!r} a norm parameter?)")
    return out


def _doubt(rule: Rule, rec: ParamRecord) -> str | None:
    """What the checkpoint cannot tell about whether ``rule`` selects ``rec`` (None: it can)."""
    if rule.kinds is not None:
        hit = rec.kinds.intersection(rule.kinds)
        maybe = _possible_kinds(rec).intersection(rule.kinds)
        if not hit and not maybe:
            return None  # certainly not selected
        guessed = hit and hit <= _GUESSED  # selected only by the checkpoint's guess of the head
        if (maybe and not hit) or guessed:
            if rule.modules is None and rule.within is None:
                kind = next(_KIND_TEXT[k] for k in _KIND_TEXT if k in (maybe or hit))
                return f"is {rec.name!r} {kind}?"
    if rule.modules is not None:
        return f"the class of the layer holding {rec.name!r}"
    if rule.within is not None:
        return f"the classes of the layers above {rec.name!r}"
    return None


_GUESSED = frozenset({"head", "matrix"})  # kinds a checkpoint gives by guessing the output layer
_KIND_TEXT = {"embedding": "an embedding", "norm": "a norm parameter",
              "head": "part of the output layer", "matrix": "a hidden matrix (not the output layer)"}


def _possible_kinds(rec: ParamRecord) -> set[str]:
    """Kinds a checkpoint parameter may have on the model that its names and shapes hide."""
    params = rec.owner._parameters
    leaf = rec.name.rpartition(".")[2]
    out = set()
    if leaf == "weight" and len(rec.shape) == 2 and len(params) == 1:
        out.add("embedding")
    if leaf == "weight" and len(rec.shape) == 2:
        out.update(("head", "matrix"))
    if leaf == "bias" and len(rec.shape) == 1:
        out.add("head")
    if (not isinstance(rec.owner, CheckpointBatchNorm) and leaf in ("weight", "bias")
            and all(p.ndim <= 1 for p in params.values())):
        out.add("norm")
    return out - rec.kinds
