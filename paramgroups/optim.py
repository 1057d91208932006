"""Finding optimizer classes, validating their options and building them from groups."""

from __future__ import annotations

import importlib
import inspect
from functools import lru_cache
from typing import Any, Callable

import torch

from .errors import OptimizerError
from .values import describe, did_you_mean, is_finite_number

# Per-parameter state tensors, as multiples of the parameter's size, by optimizer class name.
_STATE: dict[str, Callable[[dict[str, Any]], int]] = {
    "SGD": lambda o: 1 if o.get("momentum", 0) else 0,
    "Adam": lambda o: 3 if o.get("amsgrad") else 2,
    "AdamW": lambda o: 3 if o.get("amsgrad") else 2,
    "NAdam": lambda o: 2,
    "RAdam": lambda o: 2,
    "Adamax": lambda o: 2,
    "Adadelta": lambda o: 2,
    "Adagrad": lambda o: 1,
    "ASGD": lambda o: 1,
    "Rprop": lambda o: 2,
    "SparseAdam": lambda o: 2,
    "Muon": lambda o: 1,  # its momentum buffer
    "RMSprop": lambda o: 1 + bool(o.get("momentum", 0)) + bool(o.get("centered")),
}


@lru_cache(maxsize=1)
def _torch_optimizers() -> dict[str, type]:
    return {
        name.lower(): obj for name, obj in vars(torch.optim).items()
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }


def optimizer_class(spec: str | type) -> type:
    """Resolve ``"adamw"``, ``"AdamW"``, ``"timm:lamb"`` or ``"pkg.module:Class"`` to a class."""
    if inspect.isclass(spec):
        if not issubclass(spec, torch.optim.Optimizer):
            raise OptimizerError(f"{spec.__name__} is not a torch.optim.Optimizer subclass")
        return spec
    if not isinstance(spec, str) or not spec:
        raise OptimizerError(f"optimizer must be a name or a class, got {spec!r}")
    if spec.startswith("timm:"):
        return _timm_optimizer(spec[5:])
    if ":" in spec:
        return _import_class(spec)
    known = _torch_optimizers()
    cls = known.get(spec.lower())
    if cls is None:
        close = did_you_mean(spec.lower(), known, n=3)
        hint = f"; {close}" if close else f"; torch.optim has {', '.join(sorted(known))}"
        raise OptimizerError(f"unknown optimizer {spec!r}{hint}")
    return cls


def optimizer_name(spec: str | type) -> str:
    """The one name of an optimizer in a plan: torch.optim's own classes by their lower-case
    name however they are written (``"AdamW"``, ``"torch.optim:AdamW"``, the class:
    ``"adamw"``), ``"timm:lamb"`` and ``"pkg.module:Class"`` as written, any other class as
    ``"module:Qualname"``. An unknown name is an :class:`OptimizerError`."""
    cls = optimizer_class(spec)
    if _torch_optimizers().get(cls.__name__.lower()) is cls:
        return cls.__name__.lower()
    if isinstance(spec, str):
        return spec.lower() if spec.startswith("timm:") else spec
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(spec: str) -> type:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # also '' and relative names
        raise OptimizerError(f"cannot import {module_name!r} for optimizer {spec!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls) or not issubclass(cls, torch.optim.Optimizer):
        raise OptimizerError(f"{spec!r} is not a torch.optim.Optimizer class")
    return cls


def _timm_optimizer(name: str) -> type:
    try:
        from timm.optim import list_optimizers, get_optimizer_class
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise OptimizerError(f"timm optimizers need timm: {exc}") from None
    names = list_optimizers()
    if name.lower() not in names:
        close = did_you_mean(name.lower(), names, n=3)
        raise OptimizerError(f"unknown timm optimizer {name!r}" + (f"; {close}" if close else ""))
    cls = get_optimizer_class(name.lower(), bind_defaults=False)
    if not inspect.isclass(cls):  # pragma: no cover - timm returns classes when unbound
        raise OptimizerError(f"timm optimizer {name!r} is not a class")
    return cls


@lru_cache(maxsize=None)
def accepted_options(cls: type) -> tuple[dict[str, Any], bool]:
    """The constructor's keyword options with their defaults, and whether it takes ``**kwargs``."""
    sig = inspect.signature(cls.__init__)
    options, var_kw = {}, False
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 or name == "params":
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is not p.VAR_POSITIONAL:
            options[name] = p.default
    return options, var_kw


def takes(cls: type, option: str) -> bool:
    options, var_kw = accepted_options(cls)
    return option in options or var_kw


def check_option_value(cls: type, option: str, value: Any) -> Any:
    """Check ``value`` against the type of the option's default; lists become tuples.

    Numbers must be finite and >= 0 (every torch.optim hyperparameter is), flags booleans,
    and tuples (``betas``) same-length sequences of numbers.
    """
    default = accepted_options(cls)[0].get(option)
    where = f"option {option!r} of {cls.__name__}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise OptimizerError(f"{where} must be true or false, got {describe(value)}")
    elif isinstance(default, (int, float)):
        if not is_finite_number(value) or value < 0:
            raise OptimizerError(f"{where} must be a finite number >= 0, got {describe(value)}")
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default) or not all(
                is_finite_number(v) for v in value):
            raise OptimizerError(f"{where} must be {len(default)} numbers like {default}, got {describe(value)}")
        return tuple(value)
    return value


def default_lr(cls: type) -> float:
    """The optimizer's own default learning rate; an error if it has none."""
    options, _ = accepted_options(cls)
    lr = options.get("lr", inspect.Parameter.empty)
    if lr is None and "relative_step" in options:  # transformers' Adafactor: lr=None, relative_step=True
        raise OptimizerError(f"optimizer {cls.__name__} has no default lr: by default it picks "
                             f"its own step sizes (relative_step=True), which a plan cannot "
                             f"give per group or schedule; set lr in the plan (or --lr) and "
                             f"relative_step: false")
    if not is_finite_number(lr) or lr < 0:  # no default, None, a tensor
        raise OptimizerError(f"optimizer {cls.__name__} has no default lr: set lr in the plan (or --lr)")
    return float(lr)


def state_multiplier(cls: type, options: dict[str, Any]) -> int | None:
    """How many parameter-sized state tensors ``cls`` keeps per parameter, or None if unknown."""
    for klass in cls.__mro__:
        fn = _STATE.get(klass.__name__)
        if fn is not None and klass.__module__.startswith("torch.optim"):
            merged = {k: v for k, v in accepted_options(cls)[0].items()
                      if v is not inspect.Parameter.empty}
            merged.update(options)
            return fn(merged)
    return None


def implementation(cls: type, options: dict[str, Any], records: list) -> dict[str, bool]:
    """``fused=True`` where ``cls`` has a fused kernel for the parameters' device, else
    ``foreach=True``: the fused step is the fastest torch has (AdamW on ResNet-50's groups on
    the CPU: 10x foreach). With several optimizers, ask once per optimizer with the records
    routed to it (Muon takes neither option in torch 2.14: nothing is chosen for it).

    On CUDA any class taking ``fused`` counts; on the CPU only torch's own classes (Adam,
    AdamW, SGD, Adagrad in torch 2.14) whose kernels torch lists for the CPU, and only for real
    floating-point parameters with dense gradients (fused kernels refuse complex ones, sparse
    gradients and ``differentiable``). Nothing is chosen when the
    plan sets ``fused`` or ``foreach`` itself, or for parameters on other devices (MPS, ...),
    where torch's own default stands. Parameters on the meta device (an audit of a model never
    allocated) count as being on the device training will use: CUDA when this machine has it,
    else the CPU.
    """
    if "fused" in options or "foreach" in options:
        return {}
    train_on = "cuda" if torch.cuda.is_available() else "cpu"
    floats = [r for r in records if r.is_float]
    devices = {train_on if r.device.type == "meta" else r.device.type for r in floats}
    if len(devices) == 1 and _fused_on(cls, next(iter(devices))) and not options.get(
            "differentiable") and not any(r.dtype.is_complex or sparse_grad(r) for r in floats):
        return {"fused": True}
    if devices <= {"cuda", "cpu"} and devices and "foreach" in accepted_options(cls)[0]:
        return {"foreach": True}
    return {}


def _fused_on(cls: type, device: str) -> bool:
    """Whether ``cls`` has a fused step for parameters on ``device`` ("cuda" or "cpu")."""
    if "fused" not in accepted_options(cls)[0]:
        return False
    if device == "cuda":
        return True
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return (device == "cpu" and device in _get_fused_kernels_supported_devices()
            and torch_base(cls) in _FUSED_CPU)


# torch.optim classes whose ``fused=True`` runs on the CPU (torch >= 2.4)
_FUSED_CPU = frozenset({"Adam", "AdamW", "SGD", "Adagrad"})


# torch.optim classes whose step takes sparse gradients (the others raise at their first step)
_SPARSE_OK = frozenset({"SGD", "Adagrad", "SparseAdam", "LBFGS"})


def sparse_grad(record: Any) -> bool:
    """Whether the parameter gets sparse gradients: the weight of an ``nn.Embedding`` or
    ``nn.EmbeddingBag`` built with ``sparse=True``."""
    owner = record.owner
    return (isinstance(owner, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and owner.sparse
            and record.param is owner.weight)


@lru_cache(maxsize=None)
def torch_base(cls: type) -> str | None:
    """The name of the first torch.optim class in ``cls``'s MRO (``cls`` or a base it extends):
    which of torch's optimizers it steps like, or None for a class outside torch's."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.optim") and klass is not torch.optim.Optimizer:
            return klass.__name__
    return None


def unroutable(cls: type, record: Any) -> str | None:
    """Why the parameter ``record`` (an inventory ParamRecord) cannot be stepped by optimizer
    class ``cls``, or None when it can (or when ``cls`` is not torch's, which paramgroups cannot
    know). torch refuses these only at the first step, or, for Muon, when it is built:

    - Muon takes only real 2-D parameters (it orthogonalizes each update as a matrix);
    - SparseAdam takes only parameters with sparse gradients (see :func:`sparse_grad`);
    - a parameter with sparse gradients goes only to SGD, Adagrad, SparseAdam or LBFGS.
    """
    base = torch_base(cls)
    if base is None:
        return None
    what = f"{record.name} (shape {list(record.shape)})"
    sparse = sparse_grad(record)
    if base == "Muon":
        if len(record.shape) != 2:
            return (f"{what} cannot go to {cls.__name__}: Muon takes only 2-D parameters; send "
                    f"it to another optimizer (e.g. adamw), or route only matrices to Muon "
                    f"(kinds: matrix)")
        if record.dtype.is_complex:
            return (f"{what} cannot go to {cls.__name__}: Muon does not take complex "
                    f"parameters; send it to another optimizer (e.g. adamw)")
    if base == "SparseAdam" and not sparse:
        return (f"{what} cannot go to {cls.__name__}: SparseAdam takes only parameters with "
                f"sparse gradients (nn.Embedding or nn.EmbeddingBag with sparse=True); send it "
                f"to another optimizer (e.g. adamw)")
    if sparse and base not in _SPARSE_OK:
        return (f"{what} has sparse gradients ({type(record.owner).__name__} with sparse=True) "
                f"and {cls.__name__} does not take them; send it to sparseadam, sgd or adagrad, "
                f"or build the embedding with sparse=False")
    return None


@lru_cache(maxsize=None)
def refuses_dense(cls: type) -> bool:
    """Whether ``cls`` may refuse a parameter that has no sparse gradients: torch's Muon and
    SparseAdam (and their subclasses). Any other class refuses at most the weight of an
    ``nn.Embedding``/``EmbeddingBag`` (:func:`unroutable`)."""
    return torch_base(cls) in ("Muon", "SparseAdam")


def first_unroutable(cls: type, records: Any) -> tuple[int, str] | None:
    """The position of the first of ``records`` that ``cls`` cannot step, with
    :func:`unroutable`'s reason, or None. Only the records that can be refused are asked: all
    of them for Muon and SparseAdam, the weights of embeddings (sparse gradients) for the others."""
    if torch_base(cls) is None:
        return None
    every = refuses_dense(cls)
    for i, record in enumerate(records):
        if every or isinstance(record.owner, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            why = unroutable(cls, record)
            if why is not None:
                return i, why
    return None
