"""Hugging Face models by type, folder or file, built offline on the meta device.

``hf:TYPE`` builds a transformers model type from its default config (the causal-LM model
where the type has one, else the base model); a ``save_pretrained`` folder or its
``config.json`` builds the architecture the config names; a sharded checkpoint's
``*.index.json`` is read from its shards' headers. transformers is imported only here and only
when such a model is asked for; nothing is downloaded (``HF_HUB_OFFLINE=1`` while building).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from .errors import ModelError
from .models import _close, _on_device, module_from_shapes, read_checkpoint_shapes

if TYPE_CHECKING:
    from transformers import PretrainedConfig

HF_PREFIX = "hf:"
_MAX_JSON = 2**24  # a config or index is kilobytes; refuse to parse anything past 16 MiB
_INSTALL = "pip install 'paramgroups[huggingface]'"


def is_hf_path(spec: str) -> bool:
    """Whether the path ``spec`` is a Hugging Face model: a folder with a ``config.json``, a
    transformers config file (JSON with ``model_type``) or a sharded checkpoint's index (JSON
    with ``weight_map``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    return path.suffix.lower() == ".json" and _json_kind(path) is not None


def parse_config_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["num_hidden_layers=2", "hidden_act=silu"]`` as a dict; each value is read as JSON
    (``2``, ``true``, ``null``, ``0.1``), and as a plain string where it is not JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ModelError(f"config override {item!r} is not KEY=VALUE (e.g. num_hidden_layers=2)")
        if key in out:
            raise ModelError(f"config key {key!r} is given twice")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def build_hf_model(spec: str, *, config: Mapping[str, Any] | None = None,
                   num_classes: int | None = None,
                   device: str | torch.device = "meta") -> nn.Module:
    """Build ``hf:TYPE``, a ``save_pretrained`` folder, a ``config.json`` or a sharded
    checkpoint's index; ``config`` overrides values of the model's config."""
    if num_classes is not None:
        raise ModelError(f"{spec}: num_classes applies only to torchvision and timm models; a "
                         f"Hugging Face model's sizes come from its config (override values there)")
    overrides = dict(config or {})
    if spec.startswith(HF_PREFIX):
        model_type = spec[len(HF_PREFIX):]
        if "/" in model_type:
            raise ModelError(f"{spec}: hf: takes a transformers model type (hf:llama), not a "
                             f"hub repository: paramgroups never downloads; pass the folder "
                             f"save_pretrained wrote, or its config.json")
        return _build(lambda: _type_config(model_type, overrides), None, device, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if _json_kind(path) == "index":
        if overrides:
            raise ModelError(f"{spec}: a sharded checkpoint's index has no config to override; "
                             f"pass its folder or config.json instead")
        return _sharded_model(path)
    return _build(lambda: _file_config(path, overrides), path, device, spec)


# -- configs -----------------------------------------------------------------------------


def _json_kind(path: Path) -> str | None:
    """``"index"``, ``"config"`` or None (not a file, not JSON, or some other JSON)."""
    data = _read_json(path, quiet=True)
    if isinstance(data, dict) and isinstance(data.get("weight_map"), dict):
        return "index"
    if isinstance(data, dict) and isinstance(data.get("model_type"), str):
        return "config"
    return None


def _read_json(path: Path, quiet: bool = False) -> Any:
    """The JSON in ``path``; a file that cannot be read, is over 16 MiB or is not JSON gives
    ``None`` when ``quiet``, else a ModelError saying why."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_JSON + 1)
    except OSError as exc:
        problem = str(exc)
    else:
        if len(raw) > _MAX_JSON:
            problem = "larger than 16 MiB"
        else:
            try:
                return json.loads(raw)
            except (ValueError, RecursionError) as exc:  # also bad UTF-8, and nesting too deep
                problem = str(exc)
    if quiet:
        return None
    raise ModelError(f"{path}: cannot read ({problem})")


def _type_config(model_type: str, overrides: dict[str, Any]) -> PretrainedConfig:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    types = list(CONFIG_MAPPING.keys())
    if model_type not in types:
        raise ModelError(f"unknown transformers model type {model_type!r}{_close(model_type, types)}")
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    return cls(**_checked(overrides, default, set(default.to_dict()), f"hf:{model_type}"))


def _file_config(path: Path, overrides: dict[str, Any]) -> PretrainedConfig:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = _read_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("model_type"), str)):
        raise ModelError(f"{path}: not a transformers config (it has no model_type)")
    model_type = data["model_type"]
    types = list(CONFIG_MAPPING.keys())
    if model_type not in types:
        raise ModelError(f"{path}: model_type {model_type!r} is unknown to this transformers "
                         f"version{_close(model_type, types)}")
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    known = set(data) | set(default.to_dict())
    return cls.from_dict({**data, **_checked(overrides, default, known, str(path))})


def _checked(overrides: dict[str, Any], default: PretrainedConfig, known: set[str],
             where: str) -> dict[str, Any]:
    """Overrides under the config's own key names (gpt2's ``num_hidden_layers`` is ``n_layer``);
    a key the config does not have is an error naming the closest ones."""
    aliases = dict(getattr(default, "attribute_map", {}) or {})
    out = {}
    for key, value in overrides.items():
        real = aliases.get(key, key)
        if real not in known:
            raise ModelError(f"{where}: config has no key {key!r}"
                             f"{_close(key, sorted(known | set(aliases)))}")
        out[real] = value
    return out


# -- models ------------------------------------------------------------------------------


def _build(make_config: Any, path: Path | None, device: str | torch.device, spec: str) -> nn.Module:
    """The model of the config ``make_config()`` returns, built on ``device`` with transformers'
    logging quiet (the library never prints) and the hub offline."""
    with _offline_and_quiet(spec):
        try:
            config = make_config()
        except ModelError:
            raise
        except Exception as exc:  # transformers validates values in its config classes
            raise ModelError(f"{spec}: invalid config: {type(exc).__name__}: {exc}") from None
        build = _model_builder(config, path)
        return _on_device(build, device, spec)


@contextmanager
def _offline_and_quiet(spec: str) -> Iterator[None]:
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        try:
            from transformers.utils import logging
        except ImportError:
            raise ModelError(f"{spec}: Hugging Face models need transformers ({_INSTALL})") from None
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            yield
        finally:
            logging.set_verbosity(verbosity)
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _model_builder(config: PretrainedConfig, path: Path | None) -> Any:
    """A function building the model: the class the config file names in ``architectures``,
    else the causal-LM model of its type, else the base model."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = list(getattr(config, "architectures", None) or [])
    if path is not None and names:
        cls = getattr(transformers, names[0], None)
        if cls is None:
            custom = " (custom code via auto_map, which paramgroups never runs)" \
                if getattr(config, "auto_map", None) else ""
            raise ModelError(f"{path}: architecture {names[0]!r} is not in transformers "
                             f"{transformers.__version__}{custom}; write a package.module:factory "
                             f"that builds the model")
        return lambda: cls._from_config(config)
    auto = (transformers.AutoModelForCausalLM if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            else transformers.AutoModel)
    return lambda: auto.from_config(config)


def _sharded_model(index: Path) -> nn.Module:
    """A checkpoint module from the shards an index lists, reading only their headers."""
    weight_map = _read_json(index)["weight_map"]
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str):
            raise ModelError(f"{index}: weight_map lists {shard!r}, not a shard file name")
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise ModelError(f"{index}: lists shard {shard!r}, which is missing ({shard_path}: no such file)")
        shapes.update(read_checkpoint_shapes(shard_path))
    missing = next((k for k in weight_map if k not in shapes), None)
    if missing is not None:
        raise ModelError(f"{index}: {missing!r} is listed in {weight_map[missing]!r} but that "
                         f"shard does not hold it")
    return module_from_shapes(shapes, str(index))
