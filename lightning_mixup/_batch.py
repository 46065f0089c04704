"""Reading a training batch (a list or a dict of tensors) and writing the mixed one back into it.

Besides inputs and targets, a padding mask (``mask_key``) is mixed too, and with RegMixup's
``keep_clean`` every other per-sample entry is repeated for the mixed copies.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from lightning_mixup import functional as F
from lightning_mixup._boxes import is_detection_targets
from lightning_mixup.policies import MixParams


class Batch(Protocol):
    """A batch the callback writes into: a list or a mutable mapping (:func:`lookup` checks keys)."""

    def __getitem__(self, key: Any, /) -> Any: ...
    def __setitem__(self, key: Any, value: Any, /) -> None: ...
    def __len__(self) -> int: ...


#: The keys a dict batch's inputs and targets are looked for under when ``input_key`` and
#: ``target_key`` are left at None, in this order (torchvision, torchgeo, Hugging Face, ...).
INPUT_NAMES = ("image", "input", "inputs", "x", "pixel_values", "input_ids")
TARGET_NAMES = ("label", "labels", "target", "y", "mask")


def loader_parts(loaders: Any, batch: Any) -> list[str | int] | None:
    """The names (dict) or indices (list) of the training loaders, or None for a single loader.

    Raises:
        TypeError: If there are several loaders but the batch is not one sub-batch per loader.
    """
    if not isinstance(loaders, (Mapping, list, tuple)):
        return None
    parts = list(loaders.keys() if isinstance(loaders, Mapping) else range(len(loaders)))
    if not isinstance(batch, (Mapping, list, tuple)) or len(batch) != len(parts):
        raise TypeError(
            f"MixupCallback expected one sub-batch per training dataloader ({parts}), got a "
            f"{type(batch).__name__} batch."
        )
    return parts


def resolve_keys(
    batch: list | Mapping, input_key: int | str | None, target_key: int | str | None
) -> tuple[int | str, int | str]:
    """The keys of the inputs and targets; None: 0 and 1 in a list, the usual names in a dict.

    Raises:
        ValueError: If a dict batch holds none of the usual keys, or several.
    """
    if not isinstance(batch, Mapping):
        return (0 if input_key is None else input_key), (1 if target_key is None else target_key)
    return (
        input_key if input_key is not None else _usual_key(batch, "input_key", INPUT_NAMES),
        target_key if target_key is not None else _usual_key(batch, "target_key", TARGET_NAMES),
    )


def _usual_key(batch: Mapping, name: str, names: tuple[str, ...]) -> str:
    present = [key for key in names if key in batch]
    if len(present) == 1:
        return present[0]
    what = "none" if not present else f"several ({', '.join(map(repr, present))})"
    raise ValueError(
        f"`{name}` is None, so MixupCallback looks for one of {names} in the dict batch and "
        f"found {what}; the batch has the keys {list(batch.keys())}. Name the entry: "
        f"`MixupCallback({name}=...)`."
    )


def detection_keys(
    batch: Any, input_key: int | str | None, target_key: int | str | None
) -> tuple[int | str, int | str] | None:
    """The resolved keys when ``batch`` holds detection targets (a list of dicts), else None.

    None also when the keys cannot be resolved: :func:`unpack` then says why.
    """
    if not isinstance(batch, (list, MutableMapping)):
        return None
    container: Batch = batch  # a str key into a list raises the TypeError caught below
    try:
        keys = resolve_keys(batch, input_key, target_key)
        target = container[keys[1]]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return keys if is_detection_targets(target) else None


def unpack(
    batch: Any,
    input_key: int | str | None,
    target_key: int | str | None,
    part: str | int | None = None,
    float_inputs: bool = True,
) -> tuple[Batch, Tensor, Tensor, tuple[int | str, int | str]]:
    """``(container, inputs, targets, resolved keys)`` of a batch, checked for mixing.

    ``float_inputs=False`` accepts integer inputs (token ids), for a mix inside the network.

    Raises:
        TypeError: If the batch cannot be written into, an entry is not a tensor, or the inputs
            are not floating point.
        ValueError: If a key is missing, or inputs and targets disagree on the batch size.
    """
    if not isinstance(batch, (list, MutableMapping)):
        which = "batch" if part is None else f"sub-batch of training loader {part!r}"
        raise TypeError(
            f"MixupCallback writes the mixed batch back into it, so the {which} must be a list "
            f"or a dict, got {type(batch).__name__}. Return a list (e.g. `[x, y]`; the default "
            "collate does this for tuple samples) or a dict from your dataset/collate_fn."
        )
    input_key, target_key = resolve_keys(batch, input_key, target_key)
    x = lookup(batch, "input_key", input_key)
    target = lookup(batch, "target_key", target_key)
    if float_inputs and not x.is_floating_point():
        raise TypeError(
            f"Inputs `batch[{input_key!r}]` must be floating point to be mixed, got dtype "
            f"{x.dtype}; convert and normalise them first (e.g. `x.float() / 255`), or, for "
            "token ids and other discrete inputs, mix inside the network: "
            "`MixupCallback(mix_at=<layer name>)`, e.g. the embedding layer's name."
        )
    if x.ndim < 1 or target.ndim < 1 or x.shape[0] != target.shape[0]:
        raise ValueError(
            f"Inputs and targets must share the batch dimension, got shapes {tuple(x.shape)} "
            f"and {tuple(target.shape)}."
        )
    return batch, x, target, (input_key, target_key)


def lookup(batch: Batch, name: str, key: int | str) -> Tensor:
    """``batch[key]``, which must be a tensor; the errors name the argument ``name``."""
    try:
        value = batch[key]
    except (KeyError, IndexError, TypeError):
        have = list(batch.keys()) if isinstance(batch, Mapping) else f"{len(batch)} elements"
        raise ValueError(f"`{name}` = {key!r} is not in the batch (it has {have}).") from None
    if not isinstance(value, Tensor):
        raise TypeError(f"`batch[{key!r}]` must be a tensor, got {type(value).__name__}.")
    return value


def join_masks(
    batch: Batch,
    mask_key: int | str,
    marks: Literal["tokens", "padding"],
    params: MixParams,
    enabled: Tensor | None,
    keep_clean: bool,
) -> None:
    """Give each mixed sample the real tokens of both its sources in ``batch[mask_key]``.

    The union is a maximum with ``marks="tokens"``, a minimum with ``"padding"``; with
    ``keep_clean`` the clean masks come first.

    Raises:
        ValueError: If the mask does not hold one row per sample.
    """
    mask = lookup(batch, "mask_key", mask_key)
    if mask.shape[0] != len(params.partner):
        raise ValueError(
            f"`batch[{mask_key!r}]` holds {mask.shape[0]} samples but the batch "
            f"{len(params.partner)}."
        )
    partner = F.to_device(params.partner, mask.device)
    mixed = F.to_device(params.lam < 1.0, mask.device).view(-1, *([1] * (mask.ndim - 1)))
    other = mask.index_select(0, partner)
    joined = torch.maximum(mask, other) if marks == "tokens" else torch.minimum(mask, other)
    union = torch.where(mixed, joined, mask)
    if enabled is not None:
        union = torch.where(enabled.to(mask.device), union, mask)
    batch[mask_key] = torch.cat([mask, union]) if keep_clean else union


def repeat_samples(batch: Batch, n: int, skip: tuple[Any, ...]) -> None:
    """Double every per-sample entry but ``skip`` (tensors or lists of ``n`` rows) in place."""
    keys = batch.keys() if isinstance(batch, Mapping) else range(len(batch))
    for key in list(keys):
        if key in skip:
            continue
        value = batch[key]
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == n:
            batch[key] = torch.cat([value, value])
        elif isinstance(value, (list, tuple)) and len(value) == n:
            batch[key] = type(value)([*value, *value]) if isinstance(value, list) else value + value
