"""``targets="loss"``: the module's own criterion, mixed for one training step.

A sample mixed from ``i`` (share λ) and ``j`` is scored ``λ·L(ŷ, y_i) + (1-λ)·L(ŷ, y_j)`` with the
module's own criterion ``L``: the batch keeps its targets, and for the training step only the
criterion attribute is replaced by a :class:`MixedCriterion` that calls the original on each
sample's own targets and its partner's. How the two losses are blended (one λ, one λ per sample
with ``reduction="none"``, dense targets) is in ``docs/own_module.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_mixup import functional as F
from lightning_mixup.policies import MixParams

__all__ = [
    "CRITERION_NAMES",
    "ELEM_NEEDS_REDUCTION",
    "CriterionSwap",
    "LossMix",
    "MixedCriterion",
    "check_mixable",
    "find_criterion",
    "reducible",
]

#: The LightningModule's attributes searched, in this order, for its criterion when
#: ``criterion`` is not named: values set on the instance only, not methods of the class.
CRITERION_NAMES = ("criterion", "loss_fn", "loss_func", "loss")

#: Keyword names under which a criterion may be given its targets (else: the second argument).
_TARGET_KEYWORDS = ("target", "targets", "y_true", "labels", "label", "y")


def find_criterion(pl_module: nn.Module, name: str | None) -> tuple[str, Callable] | None:
    """The module's criterion as ``(attribute, criterion)``, or None when it has none.

    Args:
        pl_module: The LightningModule.
        name: The attribute to use; None looks for the first of :data:`CRITERION_NAMES` that is
            set on the instance and callable.

    Raises:
        ValueError: If ``name`` is given but the module has no callable attribute of that name.
    """
    if name is not None:
        value = getattr(pl_module, name, None)
        if not callable(value):
            what = "has no attribute" if value is None else f"has a {type(value).__name__} at"
            raise ValueError(
                f"`criterion` = {name!r}, but {type(pl_module).__name__} {what} `{name}`; name the "
                "attribute that holds the module's loss (an `nn.Module` or a function called as "
                "`loss(prediction, target)`), or use `targets='soft'`."
            )
        return name, value
    for candidate in CRITERION_NAMES:
        value = vars(pl_module).get(candidate, getattr(pl_module, "_modules", {}).get(candidate))
        if callable(value):
            return candidate, value
    return None


#: torch's losses whose second argument is not one target row per sample (a second input, or
#: CTC's targets, whose lengths are a later argument): mixing them would permute the wrong thing.
_SECOND_NOT_TARGETS = (
    nn.MarginRankingLoss,
    nn.CosineEmbeddingLoss,
    nn.TripletMarginLoss,
    nn.TripletMarginWithDistanceLoss,
    nn.CTCLoss,
)
#: The same losses as functions.
_SECOND_NOT_TARGETS_FUNCTIONS = (
    nn.functional.margin_ranking_loss,
    nn.functional.cosine_embedding_loss,
    nn.functional.triplet_margin_loss,
    nn.functional.triplet_margin_with_distance_loss,
    nn.functional.ctc_loss,
)


def check_mixable(criterion: Callable, what: str) -> None:
    """Refuse a torch loss whose second argument is not the targets; ``what`` names it.

    Raises:
        ValueError: If ``criterion`` is one of torch's ranking, embedding, triplet or CTC losses.
    """
    if isinstance(criterion, _SECOND_NOT_TARGETS) or criterion in _SECOND_NOT_TARGETS_FUNCTIONS:
        name = getattr(criterion, "__name__", type(criterion).__name__)
        raise ValueError(
            f"targets='loss' cannot mix {what} ({name}): its second argument is not one target "
            "row per sample (a second input, or CTC targets whose lengths come later), so the "
            "partners' rows would replace the wrong thing. Mix this model with targets='soft' "
            "and a loss of probability targets, or leave it unmixed."
        )


def reducible(criterion: Callable) -> bool:
    """Whether ``criterion`` can give one loss per sample: a ``reduction`` of mean or sum."""
    return getattr(criterion, "reduction", None) in ("mean", "sum")


@dataclass
class LossMix:
    """How one (sub-)batch's loss is mixed in this step.

    Attributes:
        rows: Number of samples the criterion's targets must hold.
        partner: ``(rows,)`` partner of every row, on the targets' device.
        own: ``(rows,)`` float32 share of the row's own targets, on the targets' device.
        single: The one λ of every mixed row (a float, or a 0-d tensor when a device flag may
            disable the mix), or None when the rows have different λ.
        target: The batch's targets, to tell sub-batches apart by their memory.
        used: Set when the criterion was called on these targets.
    """

    rows: int
    partner: Tensor
    own: Tensor
    single: float | Tensor | None
    target: Tensor
    used: bool = False

    @classmethod
    def build(
        cls,
        params: MixParams,
        target: Tensor,
        dense: bool,
        keep_clean: bool,
        enabled: Tensor | None,
    ) -> LossMix | None:
        """The loss mix for ``params``; None when no sample is mixed.

        Args:
            params: The batch's (final) parameters, for its ``B`` samples.
            target: The targets the criterion will see (``2B`` rows with ``keep_clean``).
            dense: Whether the targets are masks, which CutMix pastes (a cut sample's own
                share is then 1).
            keep_clean: The batch is its clean samples followed by their mixed copies.
            enabled: Optional 0-d device flag; where False the mix is off.
        """
        if params.identity:
            return None
        n = len(params.partner)
        own = params.lam.to(torch.float32)
        if dense:
            own = own.masked_fill(params.cut, 1.0)
        partner = params.partner
        shares = own[partner != torch.arange(n)]  # a self-paired sample is scored as it is
        if not bool((shares < 1).any()):
            return None
        # The criterion can be called as it is when every sample with a partner has one share.
        same = bool((shares == shares[0]).all())
        single: float | Tensor | None = float(shares[0]) if same else None
        if keep_clean:  # the clean rows are their own partners, with a share of 1
            partner = torch.cat([torch.arange(n), partner + n])
            own = torch.cat([torch.ones(n), own])
        own = F.to_device(own, target.device)
        if enabled is not None:
            own = torch.where(enabled, own, torch.ones_like(own))
            if single is not None:
                single = torch.where(enabled, single, 1.0).to(torch.float32)
        return cls(len(partner), F.to_device(partner, target.device), own, single, target)


class MixedCriterion:
    """Stands in for a module's criterion during one training step (see the module docstring).

    Attributes other than the call are the original criterion's, so ``self.criterion.weight``
    and the like still read, and setting one sets the original's. A copy or pickle of it (made
    with the module, during the step) is the original criterion.

    Args:
        original: The module's criterion.
        mixes: The loss mix of each (sub-)batch that was mixed, by loader (None: one loader).
    """

    def __init__(self, original: Callable, mixes: Mapping[Any, LossMix]) -> None:
        self.original = original
        self.mixes = mixes  # shared with the swap, which may update it during the step

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("original", "mixes"):
            object.__setattr__(self, name, value)
        else:  # the step sets the criterion's own attribute (a class weight, say)
            setattr(self.original, name, value)

    def __reduce__(self) -> tuple[Callable, tuple[Callable]]:
        # Copied or pickled with the module, it is the original again: ``copy``/``pickle`` would
        # otherwise rebuild it without ``original``, which ``__getattr__`` then looks up forever.
        return _unwrapped, (self.original,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The original criterion on each sample's own targets and its partner's, blended."""
        where, target = _target_argument(args, kwargs)
        if target is None:
            raise TypeError(
                "MixupCallback(targets='loss'): the criterion was called without targets it can "
                f"recognise (the second argument, or one of the keywords {_TARGET_KEYWORDS}), so "
                "it cannot score them against the partners' targets."
            )
        mix = self._mix_for(target)
        if mix is None:
            return self.original(*args, **kwargs)
        if target.ndim == 0 or target.shape[0] != mix.rows:
            raise ValueError(
                f"MixupCallback(targets='loss'): the criterion's targets hold "
                f"{target.shape[0] if target.ndim else 0} rows but the mixed batch {mix.rows}; "
                "give it one target row per sample, in the batch's order."
            )
        mix.used = True
        partner_target = target.index_select(0, mix.partner.to(target.device))
        other_args, other_kwargs = _with_target(args, kwargs, where, partner_target)
        if mix.single is not None:
            own_loss = self.original(*args, **kwargs)
            other_loss = self.original(*other_args, **other_kwargs)
            return mix.single * own_loss + (1 - mix.single) * other_loss
        criterion = self.original
        reduction = getattr(criterion, "reduction", None)
        if reduction not in ("mean", "sum"):
            raise ValueError(ELEM_NEEDS_REDUCTION.format(name=type(criterion).__name__))
        criterion.reduction = "none"  # type: ignore[attr-defined]  # checked above; a Callable declares none
        try:
            own_loss = criterion(*args, **kwargs)
            other_loss = criterion(*other_args, **other_kwargs)
        finally:
            criterion.reduction = reduction  # type: ignore[attr-defined]  # as above
        if own_loss.ndim == 0 or own_loss.shape[0] != mix.rows:
            raise ValueError(
                f"MixupCallback(targets='loss', mode='elem'): {type(criterion).__name__} with "
                f"reduction='none' returned shape {tuple(own_loss.shape)}, not one loss per "
                f"sample ({mix.rows}); it does not honour its `reduction` attribute. Use "
                "mode='batch' (one λ per batch, any loss)."
            )
        own = mix.own.view(-1, *([1] * (own_loss.ndim - 1))).to(own_loss.dtype)
        own_sum, other_sum = (own * own_loss).sum(), ((1 - own) * other_loss).sum()
        if reduction == "sum":
            return own_sum + other_sum
        own_count = _count(criterion, target, own_loss)
        return own_sum / own_count + other_sum / _count(criterion, partner_target, other_loss)

    def _mix_for(self, target: Tensor) -> LossMix | None:
        """The loss mix whose targets these are (several loaders: told apart by their memory)."""
        if len(self.mixes) == 1 and None in self.mixes:
            return self.mixes[None]
        for mix in self.mixes.values():
            if _same_memory(mix.target, target):
                return mix
        return None


def _unwrapped(criterion: Callable) -> Callable:
    return criterion


#: Why ``mode="elem"`` refuses a criterion without a usable ``reduction``; ``{name}`` names it.
ELEM_NEEDS_REDUCTION = (
    "MixupCallback(targets='loss', mode='elem') scores each sample with its own λ, so it calls "
    "the criterion with reduction='none'; {name} has no `reduction` attribute set to 'mean' or "
    "'sum' (torch's losses do). Use mode='batch' (one λ per batch: any loss works), or "
    "targets='soft'."
)


def _count(criterion: Callable, target: Tensor, unreduced: Tensor) -> Tensor | int:
    """What the criterion's ``"mean"`` divides by for ``target``: torch's rule."""
    if isinstance(criterion, (nn.CrossEntropyLoss, nn.NLLLoss)) and not target.is_floating_point():
        labelled = target != criterion.ignore_index
        if criterion.weight is None:
            return labelled.sum()
        weight = criterion.weight.to(unreduced.dtype)
        return (weight[target.masked_fill(~labelled, 0)] * labelled).sum()
    return unreduced.numel()


def _target_argument(args: tuple, kwargs: dict) -> tuple[int | str | None, Tensor | None]:
    for key in _TARGET_KEYWORDS:
        if isinstance(kwargs.get(key), Tensor):
            return key, kwargs[key]
    if len(args) >= 2 and isinstance(args[1], Tensor):
        return 1, args[1]
    return None, None


def _with_target(
    args: tuple, kwargs: dict, where: int | str | None, value: Tensor
) -> tuple[tuple, dict]:
    if isinstance(where, str):
        return args, {**kwargs, where: value}
    return (*args[:1], value, *args[2:]), kwargs


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape[0] == b.shape[0]


class CriterionSwap:
    """Puts a :class:`MixedCriterion` in place of the module's criterion for one training step.

    The replacement is written into the instance's ``__dict__``, in front of the module's own
    attribute (for an ``nn.Module`` criterion: its registered submodule), so the module's
    ``state_dict``, parameters and device moves never see it; removing it restores the original.

    Args:
        name: The criterion's attribute.
        original: The criterion.
    """

    def __init__(self, name: str, original: Callable) -> None:
        self.name, self.original = name, original
        self._module: pl.LightningModule | None = None
        self._saved: tuple[bool, Any] = (False, None)
        self._mixes: dict[Any, LossMix] = {}

    def install(self, pl_module: pl.LightningModule, mixes: Mapping[Any, LossMix]) -> None:
        """Replace the criterion by the mixed one for this step (nothing when nothing is mixed)."""
        self.restore()
        if not mixes:
            return
        self._mixes = dict(mixes)
        here = vars(pl_module)
        self._saved = (self.name in here, here.get(self.name))
        here[self.name] = MixedCriterion(self.original, self._mixes)
        self._module = pl_module

    def update(self, part: Any, mix: LossMix | None) -> None:
        """Replace the loss mix of ``part`` (a hidden layer's CutMix boxes were drawn)."""
        if mix is None:
            self._mixes.pop(part, None)
        else:
            self._mixes[part] = mix

    def restore(self) -> None:
        """Put the module's own criterion back (idempotent)."""
        if self._module is None:
            return
        here = vars(self._module)
        had, value = self._saved
        if had:
            here[self.name] = value
        else:
            here.pop(self.name, None)
        self._module, self._saved = None, (False, None)

    def finish_step(self, outputs: Any) -> None:
        """Restore the criterion; refuse a step that mixed the inputs but never called it."""
        unused = [part for part, mix in self._mixes.items() if not mix.used]
        self.restore()
        self._mixes = {}
        if unused and outputs is not None:
            which = "" if unused == [None] else f" (training loaders {unused})"
            raise RuntimeError(
                f"MixupCallback(targets='loss'): the training step{which} did not call "
                f"`{self.name}` on the batch's targets, so the loss ignored the partners' "
                f"targets while the inputs were mixed. Compute the loss with `self.{self.name}("
                "prediction, target)`, name the right attribute with `criterion=`, or use "
                "targets='soft'."
            )
