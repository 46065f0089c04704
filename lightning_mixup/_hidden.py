"""Mixing inside the network: a forward hook on one layer that lives for one training step.

Manifold Mixup (Verma et al., ICML 2019) mixes a hidden layer's output instead of the inputs. The
callback places a :class:`LayerHook` on the chosen layer in ``on_train_batch_start`` and removes it
when the step ends (or raises), so validation, test and predict never see it; within the step only
the layer's first call is mixed, so a second forward pass (an EMA or teacher model sharing the
layer, a consistency loss) runs unmixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["LayerHook", "first_tensor", "is_compiled"]


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
    if isinstance(container, Mapping):
        out = dict(container)
        out[key] = new
        return type(container)(out) if type(container) is not dict else out
    items = list(container)
    items[key] = new
    if isinstance(container, tuple) and hasattr(container, "_fields"):  # a namedtuple
        return type(container)(*items)
    return type(container)(items)


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

    @property
    def armed(self) -> bool:
        """True between :meth:`arm` and :meth:`disarm`."""
        return self.handle is not None

    def arm(self, mix: Callable[[Tensor], Tensor]) -> None:
        """Mix the layer's next output with ``mix(tensor) -> mixed tensor``, once."""
        self.disarm()
        self.fired = False

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self.fired:
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
