"""Mixing inside the network: a forward hook on one layer that lives for one training step.

Manifold Mixup (Verma et al., ICML 2019) mixes a hidden layer's output instead of the inputs.
:class:`HiddenLayers` holds the ``mix_at`` choice: in ``on_train_batch_start`` the callback mixes
the targets and places a :class:`LayerHook` on the chosen layer, and removes it when the step ends
(or raises), so validation, test and predict never see it; within the step only the layer's first
call is mixed, so a second forward pass (an EMA or teacher model sharing the layer, a consistency
loss) runs unmixed, while activation checkpointing's recomputation in backward is mixed the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_mixup import functional as F
from lightning_mixup import policies as P
from lightning_mixup._seed import numpy_generator
from lightning_mixup.policies import Draft, MixParams

__all__ = ["HiddenLayers", "LayerHook", "first_tensor", "is_compiled"]


def first_tensor(output: Any) -> tuple[Tensor | None, Callable[[Tensor], Any]]:
    """The tensor a layer's output is mixed through, and a function that puts a replacement back.

    A tensor is itself; in a tuple or list it is the first tensor element, in a dict the first
    tensor value (in insertion order). Anything else has none: ``(None, ...)``.
    """
    if isinstance(output, Tensor):
        return output, lambda new: new
    if isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            if isinstance(item, Tensor):
                return item, lambda new, i=i: _replaced(output, i, new)
    if isinstance(output, Mapping):
        for key, item in output.items():
            if isinstance(item, Tensor):
                return item, lambda new, key=key: _replaced(output, key, new)
    return None, lambda new: output


def _replaced(container: Any, key: Any, new: Tensor) -> Any:
    kind = type(container)  # taken before the isinstance checks narrow it to an abstract type
    if isinstance(container, Mapping):
        out = dict(container)
        out[key] = new
        return kind(out) if kind is not dict else out
    items = list(container)
    items[key] = new
    if isinstance(container, tuple) and hasattr(container, "_fields"):  # a namedtuple
        return kind(*items)
    return kind(items)


class LayerHook:
    """A one-shot forward hook: the first call of ``module`` after :meth:`arm` is mixed.

    Args:
        name: The layer's name in ``named_modules()`` (for messages).
        module: The layer.
    """

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        self.handle: RemovableHandle | None = None
        self.fired = False

    def arm(self, mix: Callable[[Tensor], Tensor]) -> None:
        """Mix the layer's next output with ``mix(tensor) -> mixed tensor``, once."""
        self.disarm()
        self.fired = False

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            # A call during backward is activation checkpointing recomputing the first call's
            # output: it gets the same mix, or the gradients would be those of unmixed features.
            if self.fired and torch._C._current_graph_task_id() == -1:
                return None
            self.fired = True
            tensor, put = first_tensor(output)
            if tensor is None or not tensor.is_floating_point():
                what = type(output).__name__ if tensor is None else f"dtype {tensor.dtype}"
                raise TypeError(
                    f"MixupCallback(mix_at={self.name!r}): the layer's output must be a floating "
                    f"point tensor, or hold one (first of a tuple, list or dict), got {what}; "
                    "choose a layer that outputs features."
                )
            return put(mix(tensor))

        self.handle = self.module.register_forward_hook(hook)

    def disarm(self) -> bool:
        """Remove the hook; return whether it had fired since :meth:`arm`."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        return self.fired


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` or one of its submodules runs through ``torch.compile``.

    Looks for Lightning's record of an unwrapped compiled module, ``OptimizedModule`` wrappers and
    modules compiled in place with ``nn.Module.compile()``, without importing the compiler.
    """
    if getattr(module, "_compiler_ctx", None):
        return True
    return any(
        type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None
        for m in module.modules()
    )


class HiddenLayers:
    """Where each batch is mixed (``mix_at``), and the hooks that mix a hidden layer's output.

    Args:
        mix_at: ``"input"``, the name of a layer as ``named_modules()`` spells it, or a list of
            distinct such names, one drawn per batch.

    Raises:
        ValueError: If ``mix_at`` is none of these.
    """

    def __init__(self, mix_at: str | Sequence[str]) -> None:
        names = (mix_at,) if isinstance(mix_at, str) else mix_at
        if (
            not isinstance(names, (list, tuple))
            or not names
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise ValueError(
                "`mix_at` must be 'input', a layer name from `named_modules()` or a list of "
                f"distinct such names, got {mix_at!r}."
            )
        self.names: tuple[str, ...] = tuple(names)
        self.mix_at = mix_at if isinstance(mix_at, str) else list(self.names)
        self.hooks: dict[str, LayerHook] = {}

    def bind(self, pl_module: nn.Module) -> None:
        """Find the named layers in ``pl_module``; refuse unknown names and compiled modules."""
        layers = [name for name in self.names if name != "input"]
        modules = dict(pl_module.named_modules())
        for name in layers:
            if name not in modules:
                valid = [n for n in modules if n]
                near = difflib.get_close_matches(name, valid, n=5, cutoff=0.5) or valid[:8]
                raise ValueError(
                    f"`mix_at` names {name!r}, which is not a submodule of "
                    f"{type(pl_module).__name__}; the nearest valid names: {near} (all come from "
                    "`named_modules()`; 'input' mixes the inputs)."
                )
        if layers and is_compiled(pl_module):
            raise ValueError(
                f"`mix_at` = {self.mix_at!r} mixes a hidden layer through a forward hook, which a "
                "`torch.compile`d module may trace once and then skip, or never see: silently no "
                "mix. Train the module uncompiled with `mix_at`, or mix at the inputs."
            )
        self.hooks = {name: LayerHook(name, modules[name]) for name in layers}

    def choose(self, key: tuple) -> str:
        """Where this batch is mixed: the one ``mix_at`` entry, or one drawn from the list."""
        if len(self.names) == 1:
            return self.names[0]
        return self.names[int(numpy_generator(*key, "mix_at").integers(len(self.names)))]

    def refuse_loaders(self, parts: list[str | int] | None) -> None:
        """Refuse several training loaders (``parts``) when a layer inside the network is mixed."""
        if parts is not None and self.hooks:
            raise ValueError(
                f"`mix_at` = {self.mix_at!r} mixes a layer inside the network, which sees the "
                f"sub-batches of the {len(parts)} training loaders in calls the callback cannot "
                "tell apart; with several training loaders, mix at the inputs."
            )

    def target_form(
        self,
        at: str,
        shape: Sequence[int],
        target: Tensor,
        policy: P.MixUp | P.CutMix | P.MixUpOrCutMix,
    ) -> str:
        """The targets' form for inputs of ``shape``; refuses what ``policy`` cannot mix at ``at``.

        Checked on every batch, mixed or not, so a bad batch fails at once: inputs that CutMix
        cannot cut, and CutMix at a hidden layer with dense targets.
        """
        if at == "input":
            policy.check_shape(shape)
        form = F.target_form(shape, target)
        if at != "input" and form.endswith("mask") and policy._cut_prob > 0:
            raise ValueError(
                f"CutMix at the hidden layer {at!r} would cut a box on the layer's grid, which "
                f"the {form.replace('_', ' ')} of the inputs' pixels does not follow; mix dense "
                "targets at the inputs (`mix_at='input'`) or use MixUp alone (`cutmix_alpha=0`)."
            )
        return form

    @staticmethod
    def requested(draft: Draft, generator: np.random.Generator, at: str) -> MixParams:
        """The draft's parameters without boxes, each sample at its requested λ (no draw)."""
        blended = replace(draft, cut=np.zeros_like(draft.cut))  # no boxes: draws nothing more
        return replace(blended.finish((), generator), at=at)

    def arm(
        self,
        at: str,
        draft: Draft,
        generator: np.random.Generator,
        params: MixParams,
        y: Tensor | None,
        unlabelled: Tensor | None,
        enabled: Tensor | None,
        keep_clean: bool,
        boxes_drawn: Callable[[MixParams, MixParams], None],
    ) -> Tensor | None:
        """Mix the targets ``y`` now with ``params`` (:meth:`requested`) and arm the layer's hook.

        Returns the mixed targets, after the clean ones with ``keep_clean``; the hook mixes the
        layer's output (the second half of it with ``keep_clean``). CutMix's box is drawn on the
        layer's grid, known only when the layer runs: the hook then rewrites the targets in place
        with the exact kept area before the loss reads them, and calls ``boxes_drawn(params,
        final)`` with the final parameters. With ``y`` None (``targets="loss"``) only the
        layer's output is mixed, and None is returned.
        """
        if params.identity:
            return y
        batch_size = len(draft.partner)
        out = mixed = None
        if y is not None:
            out = mixed = P.gated_target(y, params, enabled, unlabelled)
            if keep_clean:  # clean rows, then the mixed ones; the hook rewrites the second half
                out = torch.cat([y, mixed])
                mixed = out[batch_size:]
        rows = 2 * batch_size if keep_clean else batch_size
        drawn: list[MixParams] = []  # the final parameters, kept for a recomputation in backward

        def mix(h: Tensor) -> Tensor:
            final = drawn[0] if drawn else params
            if h.shape[0] != rows:
                raise ValueError(
                    f"MixupCallback(mix_at={at!r}): the layer's output holds {h.shape[0]} samples "
                    f"but the batch {rows}; choose a layer that keeps the batch dimension."
                )
            clean, h = (h[:batch_size], h[batch_size:]) if keep_clean else (None, h)
            if draft.needs_boxes and not drawn:
                if not 3 <= h.ndim <= 5:
                    raise ValueError(
                        f"CutMix at the layer {at!r} needs an output of shape (B, C, *spatial) "
                        f"with 1 to 3 spatial dimensions, got shape {tuple(h.shape)}; use MixUp "
                        "there (`cutmix_alpha=0`) or mix at another layer."
                    )
                final = replace(draft.finish(h.shape[2:], generator), at=at)
                if y is not None and mixed is not None:
                    mixed.copy_(P.gated_target(y, final, enabled, unlabelled))
                boxes_drawn(params, final)
                drawn.append(final)
            new = P.mix_features(h, final)
            new = new if enabled is None else torch.where(enabled, new, h)
            return new if clean is None else torch.cat([clean, new])

        self.hooks[at].arm(mix)
        return out

    def finish_step(self, outputs: Any) -> None:
        """Remove the armed hook; refuse a step that mixed the targets but not the layer."""
        for name, hook in self.hooks.items():
            if hook.handle is not None and not hook.disarm() and outputs is not None:
                raise RuntimeError(
                    f"MixupCallback(mix_at={name!r}): the layer did not run in this training step, "
                    "so the targets were mixed but not the features. Name a layer that the "
                    "training step calls (see `named_modules()`), or mix at the inputs."
                )

    def disarm_all(self) -> None:
        """Remove any hook left by a training step that raised."""
        for hook in self.hooks.values():
            hook.disarm()
