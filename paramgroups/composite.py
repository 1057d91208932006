"""One ``torch.optim.Optimizer`` over several: Muon for the hidden matrices and AdamW for the
rest (or SparseAdam for sparse embeddings beside AdamW) stepped, scheduled and checkpointed as
one object, so LR schedulers, trainers and ``torch.save`` see a single ordinary optimizer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Callable

import torch

from .errors import OptimizerError
from .values import hint

Order = Sequence[tuple[str, int]]


class CompositeOptimizer(torch.optim.Optimizer):
    """Several torch optimizers behind one ``torch.optim.Optimizer``.

    ``optimizers`` maps a name to each inner optimizer (a mapping, or ``(name, optimizer)``
    pairs); ``order`` lists ``(name, group index in that optimizer)`` for every inner group, in
    the order the composite shows them (default: all groups of the first optimizer, then the
    next). Each inner optimizer keeps its own math, state and step; the composite holds no
    parameters of its own:

    - ``param_groups`` is one list of the inner optimizers' own group dicts in that order (the
      same objects, so a scheduler writing ``group["lr"]`` changes the inner optimizer), each
      carrying ``"optimizer": name`` (torch optimizers ignore keys they do not use).
    - ``step(closure)`` evaluates the closure once, then steps every inner optimizer in turn;
      ``zero_grad`` clears them all; ``add_param_group`` routes by the group's ``"optimizer"``.
    - ``state_dict()`` is torch's standard layout with parameter indices numbered in
      ``param_groups`` order, so ``torch.load(weights_only=True)`` and tools that expect one
      optimizer (DCP's ``get_optimizer_state_dict``) read it as one; ``load_state_dict`` splits
      it back and refuses one of another layout, saying what differs.
    - ``state`` is a view over the inner states keyed by parameter (``optimizer.state[p]``).
    - ``defaults`` holds the options every inner optimizer has with one shared value. An option
      they set differently (Muon's ``lr`` beside AdamW's) is left out rather than shown with one
      optimizer's value; so torch's ``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True``
      refuse a Muon + AdamW composite (neither ``momentum`` nor ``betas`` is shared) instead of
      cycling only one of them; with ``cycle_momentum=False`` they schedule every group.

    Step hooks, state-dict hooks and LR schedulers' ``step`` patching work as on any optimizer;
    the inner optimizers' own hooks run when the composite steps or saves them. Add groups
    through the composite (an inner ``add_param_group`` called directly is not seen).
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]
                 | Sequence[tuple[str, torch.optim.Optimizer]], order: Order | None = None) -> None:
        items = list(optimizers.items() if isinstance(optimizers, Mapping) else optimizers)
        _check_optimizers(items)
        self._optimizers: dict[str, torch.optim.Optimizer] = dict(items)
        if order is None:
            order = [(name, j) for name, opt in items for j in range(len(opt.param_groups))]
        self._order: list[tuple[str, int]] = _check_order(self._optimizers, order)
        for name, opt in items:
            for group in opt.param_groups:
                if group.setdefault("optimizer", name) != name:
                    raise OptimizerError(f"a group of optimizer {name!r} says \"optimizer\": "
                                         f"{group['optimizer']!r}")
        self.defaults: dict[str, Any] = _shared_defaults(opt.defaults for _, opt in items)
        self.state = _StateView(self._optimizers)
        self.param_groups: list[dict[str, Any]] = self._groups_in_order()
        self._init_hooks()

    @classmethod
    def build(cls, groups: Sequence[dict[str, Any]],
              optimizers: Mapping[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]]
              ) -> "CompositeOptimizer":
        """Build the inner optimizers and the composite from torch group dicts.

        ``groups`` are the composite's groups in their final order, each naming its optimizer
        under ``"optimizer"``; ``optimizers`` maps each name to ``(class, constructor
        options)``, in the order they step. Every name needs at least one group.
        """
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in optimizers}
        order = []
        for i, group in enumerate(groups):
            name = group.get("optimizer")
            if name not in per:
                raise OptimizerError(f"group {i} names optimizer {name!r}; "
                                     f"{hint(name, per, what='the optimizers are')}")
            order.append((name, len(per[name])))
            per[name].append(group)
        built = []
        for name, (klass, options) in optimizers.items():
            if not per[name]:
                raise OptimizerError(f"optimizer {name!r} ({klass.__name__}) has no parameter group")
            try:
                built.append((name, klass(per[name], **options)))
            except (ValueError, TypeError, RuntimeError) as exc:
                raise OptimizerError(f"optimizer {name!r} ({klass.__name__}) rejected its settings: "
                                     f"{exc}") from None
        return cls(built, order)

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The inner optimizers by name, in the order they step (a copy of the mapping)."""
        return dict(self._optimizers)

    def _groups_in_order(self) -> list[dict[str, Any]]:
        return [self._optimizers[name].param_groups[j] for name, j in self._order]

    def _init_hooks(self) -> None:
        """The attributes ``torch.optim.Optimizer.__init__`` sets for hooks and profiling (its
        own ``__init__`` would add the groups itself, through ``add_param_group``)."""
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self._optimizers, "order": self._order}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["optimizers"], state["order"])

    def __repr__(self) -> str:
        inner = "".join(f"\n  {name}: " + repr(opt).replace("\n", "\n  ")
                        for name, opt in self._optimizers.items())
        return f"{type(self).__name__} ({inner}\n)"

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate ``closure`` once (with gradients enabled), then step each inner optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer its ``"optimizer"`` key names; it goes last."""
        name = param_group.get("optimizer") if isinstance(param_group, dict) else None
        if name not in self._optimizers:
            what = ("a group without an \"optimizer\" key" if name is None
                    else f"a group for unknown optimizer {name!r}")
            raise OptimizerError(f"{type(self).__name__}.add_param_group got {what}; "
                                 f"{hint(name, self._optimizers, what='the optimizers are')}")
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for other, opt in self._optimizers.items():
            if other != name and _owns(opt, params):
                raise OptimizerError(f"add_param_group: a parameter of the group for {name!r} is "
                                     f"already stepped by {other!r}")
        inner = self._optimizers[name]
        try:
            inner.add_param_group(param_group)
        except (ValueError, TypeError) as exc:
            raise OptimizerError(f"optimizer {name!r} refused the group: {exc}") from None
        self._order.append((name, len(inner.param_groups) - 1))
        self.param_groups.append(inner.param_groups[-1])

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch's layout over all groups: ``{"state": {index: ...}, "param_groups": [...]}``
        with indices numbered in ``param_groups`` order; each group keeps ``"optimizer"``."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        inner = {name: opt.state_dict() for name, opt in self._optimizers.items()}
        groups, state, start = [], {}, 0
        for name, j in self._order:
            saved = inner[name]["param_groups"][j]
            indices = list(range(start, start + len(saved["params"])))
            for old, new in zip(saved["params"], indices):
                if old in inner[name]["state"]:
                    state[new] = inner[name]["state"][old]
            groups.append({**saved, "params": indices})
            start += len(indices)
        state_dict = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Split a state dict of this layout into each inner optimizer's ``load_state_dict``.

        Parameter keys may be indices or any other keys (DCP passes names): they are matched by
        position, as torch does. A state dict of another layout (another number of groups,
        another optimizer for a group, another number of parameters in one) is an
        :class:`OptimizerError` saying which group differs and how.
        """
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._check_layout(state_dict)
        saved_state = state_dict["state"]
        parts = {name: {"state": {}, "param_groups": [None] * len(opt.param_groups)}
                 for name, opt in self._optimizers.items()}
        for (name, j), group in zip(self._order, state_dict["param_groups"]):
            parts[name]["param_groups"][j] = group
            parts[name]["state"].update((k, saved_state[k]) for k in group["params"] if k in saved_state)
        for name, opt in self._optimizers.items():
            opt.load_state_dict(parts[name])
        self.param_groups[:] = self._groups_in_order()  # torch replaced the group dicts
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_layout(self, state_dict: Mapping[str, Any]) -> None:
        names = ", ".join(self._optimizers)
        if not isinstance(state_dict.get("param_groups"), list) or not isinstance(
                state_dict.get("state"), Mapping):
            raise OptimizerError("not an optimizer state dict: it needs \"state\" and \"param_groups\"")
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups):
            raise OptimizerError(f"the state dict has {len(saved)} param groups, this optimizer "
                                 f"({names}) has {len(self.param_groups)}: it was saved from "
                                 f"another plan or model")
        for i, (group, (name, _), mine) in enumerate(zip(saved, self._order, self.param_groups)):
            label = f"group {i}" + (f" ({mine['name']})" if "name" in mine else "")
            got = group.get("optimizer")
            if got is None:
                raise OptimizerError(f"{label} of the state dict names no optimizer: it was saved "
                                     f"from a single optimizer, not from one over {names}")
            if got != name:
                raise OptimizerError(f"{label} is stepped by {got!r} in the state dict but by "
                                     f"{name!r} here")
            if len(group["params"]) != len(mine["params"]):
                raise OptimizerError(f"{label} has {len(group['params'])} parameters in the state "
                                     f"dict but {len(mine['params'])} here")


class _StateView(MutableMapping):
    """The inner optimizers' ``state`` as one mapping keyed by parameter. Reading a parameter
    with no state yet gives the owning optimizer's new empty entry, as torch's defaultdict does."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self._optimizers = optimizers

    def _owner(self, param: Any) -> torch.optim.Optimizer:
        for opt in self._optimizers.values():
            if param in opt.state:
                return opt
        for opt in self._optimizers.values():
            if _owns(opt, [param]):
                return opt
        raise KeyError(param)

    def __getitem__(self, param: Any) -> Any:
        return self._owner(param).state[param]

    def __setitem__(self, param: Any, value: Any) -> None:
        self._owner(param).state[param] = value

    def __delitem__(self, param: Any) -> None:
        del self._owner(param).state[param]

    def __contains__(self, param: Any) -> bool:
        return any(param in opt.state for opt in self._optimizers.values())

    def get(self, param: Any, default: Any = None) -> Any:
        return self[param] if param in self else default

    def __iter__(self) -> Iterator[Any]:
        for opt in self._optimizers.values():
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._optimizers.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} parameters with state)"


def _owns(opt: torch.optim.Optimizer, params: Sequence[Any]) -> bool:
    ids = {id(p) for p in params}
    return any(id(p) in ids for group in opt.param_groups for p in group["params"])


def _check_optimizers(items: list[tuple[str, Any]]) -> None:
    if not items:
        raise OptimizerError("CompositeOptimizer needs at least one optimizer")
    seen: dict[int, str] = {}
    for name, opt in items:
        if not isinstance(name, str) or not name:
            raise OptimizerError(f"optimizer names must be non-empty strings, got {name!r}")
        if not isinstance(opt, torch.optim.Optimizer) or isinstance(opt, CompositeOptimizer):
            raise OptimizerError(f"{name!r} must be a torch.optim.Optimizer (not a composite), "
                                 f"got {type(opt).__name__}")
        if isinstance(opt, torch.optim.LBFGS):
            raise OptimizerError(f"{name!r}: LBFGS re-evaluates the closure inside its step, "
                                 f"which an optimizer stepped beside others cannot do")
        for group in opt.param_groups:
            for p in group["params"]:
                other = seen.setdefault(id(p), name)
                if other != name:
                    raise OptimizerError(f"a parameter of shape {list(p.shape)} is in both "
                                         f"{other!r} and {name!r}: each may be stepped by one only")
    if len({name for name, _ in items}) != len(items):
        raise OptimizerError(f"optimizer names repeat: {', '.join(name for name, _ in items)}")


def _check_order(optimizers: Mapping[str, torch.optim.Optimizer], order: Order) -> list[tuple[str, int]]:
    expected = {(name, j) for name, opt in optimizers.items() for j in range(len(opt.param_groups))}
    order = [tuple(entry) for entry in order]
    if len(order) != len(expected) or set(order) != expected:
        missing = sorted(expected - set(order))
        extra = sorted(set(order) - expected, key=repr)
        repeated = len(order) != len(set(order))
        raise OptimizerError("order must list every (optimizer name, group index) once"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else "")
                             + ("; some repeat" if repeated else ""))
    return order


def _shared_defaults(all_defaults: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The options every optimizer has, with the value they all give it."""
    first, *rest = list(all_defaults)
    return {k: v for k, v in first.items() if all(k in d and _same(v, d[k]) for d in rest)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False
