"""Mixing policies: ``sample(...)`` draws a batch's parameters, ``apply(...)`` uses them.

:class:`MixUp` (Zhang et al., 2018, *mixup: Beyond Empirical Risk Minimization*), :class:`CutMix`
(Yun et al., 2019, *CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
Features*) and :class:`MixUpOrCutMix` share one sampler, one parameter type and one ``apply``.
Pairing and the λ convention are those of :mod:`lightning_mixup.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lightning_mixup import _checks as C
from lightning_mixup import functional as F

__all__ = [
    "CutMix",
    "Draft",
    "MixParams",
    "MixUp",
    "MixUpOrCutMix",
    "Mode",
    "mix_features",
    "make_policy",
    "mix_target",
]

#: ``"batch"``: one λ (and box) for the whole batch; ``"elem"``: one per sample.
Mode = Literal["batch", "elem"]

#: On the CPU, samples of at least this many bytes are mixed pair by pair
#: (:func:`~lightning_mixup.functional.mix_pairs_`): about one copy of the batch instead of the
#: gather's two and a half. Below it the per-pair Python calls cost more than they save
#: (``benchmarks/bench_mix.py`` measures both sides).
PAIRWISE_MIN_BYTES = 128 << 10
_MODES: tuple[Mode, ...] = ("batch", "elem")


@dataclass(frozen=True)
class MixParams:
    """Everything random about one batch's mix, drawn on the CPU.

    Attributes:
        partner: ``(B,)`` int64 partner of every sample.
        lam: ``(B,)`` float64 share each sample keeps of itself (1 = untouched, as for the
            sample an odd batch pairs with itself). For CutMix samples it is the exact kept-area
            fraction.
        cut: ``(B,)`` bool, True where the sample gets a CutMix box instead of a blend.
        lo: ``(B, d)`` inclusive box corners, or None when no sample uses CutMix.
        hi: ``(B, d)`` exclusive box corners, or None.
        per_batch: True when one λ (and one box) serves the whole batch.
        identity: True when applying these parameters changes nothing.
        at: Where the batch is mixed: ``"input"``, or the name of the layer whose output is.
    """

    partner: Tensor
    lam: Tensor
    cut: Tensor
    lo: Tensor | None = None
    hi: Tensor | None = None
    per_batch: bool = True
    identity: bool = False
    at: str = "input"

    @classmethod
    def unmixed(cls, batch_size: int) -> MixParams:
        """The parameters of a batch of ``batch_size`` samples that is left as it is."""
        return cls(
            partner=torch.arange(batch_size),
            lam=torch.ones(batch_size, dtype=torch.float64),
            cut=torch.zeros(batch_size, dtype=torch.bool),
            identity=True,
        )

    @property
    def is_identity(self) -> bool:
        """True when applying these parameters would change nothing."""
        return self.identity

    @property
    def blends(self) -> bool:
        """True when some sample is blended (MixUp), which an integer index mask cannot hold."""
        return bool(((self.lam < 1.0) & ~self.cut).any())

    def cuts_only(self) -> MixParams:
        """These parameters with every blended sample left as it is: what an index mask follows.

        Under ``targets="loss"`` blended samples keep their own mask (their loss is blended).
        """
        lam = torch.where(self.cut, self.lam, torch.ones_like(self.lam))
        return replace(self, lam=lam, identity=self.identity or not bool((lam < 1.0).any()))


@dataclass(frozen=True)
class Draft:
    """A batch's draws before the CutMix boxes (:meth:`_Policy.draft`); λ is the requested one.

    Attributes:
        partner: ``(B,)`` partner of every sample.
        lam: λ per draw (one in ``batch`` mode, one per sample in ``elem`` mode), 1 where unmixed.
        cut: Per draw, True where CutMix was chosen.
        per_batch: True in ``batch`` mode.
    """

    partner: np.ndarray
    lam: np.ndarray
    cut: np.ndarray
    per_batch: bool

    @property
    def mixes(self) -> bool:
        """True when some sample may change (before the boxes: a box may still keep all)."""
        return len(self.partner) > 1 and bool((self.lam < 1.0).any())

    @property
    def needs_boxes(self) -> bool:
        """True when some sample is cut, so :meth:`finish` needs the spatial size."""
        return bool(self.cut.any())

    def finish(self, spatial: Sequence[int], generator: np.random.Generator) -> MixParams:
        """Draw the boxes for inputs of ``spatial`` size (last on ``generator``); the params.

        Args:
            spatial: Spatial size of what is cut (ignored when no sample is cut).
            generator: The generator the draft was drawn from, in the state it left it.
        """
        n, lam, cut, per_batch = len(self.partner), self.lam, self.cut, self.per_batch
        lo = hi = None
        if cut.any():
            corner_lo, corner_hi, kept = F._boxes(lam, spatial, generator)
            lam = np.where(cut, kept, lam)
            if per_batch:
                corner_lo, corner_hi = corner_lo.repeat(n, axis=0), corner_hi.repeat(n, axis=0)
            lo, hi = torch.from_numpy(corner_lo), torch.from_numpy(corner_hi)
        if per_batch:  # one λ: the batch changes unless it keeps all (or holds one sample)
            identity = n < 2 or lam[0] >= 1.0
            lam, cut = lam.repeat(n), cut.repeat(n)
        else:
            lam = lam.copy()
        if n % 2:  # the sample an odd batch pairs with itself keeps all of itself
            lam[self.partner == np.arange(n)] = 1.0
        if not per_batch:
            identity = n < 2 or not (lam < 1.0).any()
        return MixParams(
            torch.from_numpy(self.partner),
            torch.from_numpy(lam),
            torch.from_numpy(cut),
            lo,
            hi,
            per_batch,
            identity,
        )


class _Policy:
    """One sampler for all three policies: they differ in α's and the CutMix probability."""

    mode: Mode
    _mix_alpha: float = 0.0
    _cut_alpha: float = 0.0
    _cut_prob: float = 0.0

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if this policy may draw CutMix and ``shape`` cannot be cut.

        Called by :meth:`sample` and by the callback on every training batch, mixed or not, so an
        unfit shape fails on the first batch instead of the first one that happens to draw CutMix.
        """
        if self._cut_prob > 0 and not 3 <= len(shape) <= 5:
            raise ValueError(
                "CutMix needs inputs of shape (B, C, *spatial) with 1 to 3 spatial dimensions "
                f"(audio, images or volumes), got shape {tuple(shape)}; use MixUp for other inputs."
            )

    def sample(
        self,
        shape: Sequence[int],
        generator: np.random.Generator,
        p: float = 1.0,
        alpha_scale: float = 1.0,
    ) -> MixParams:
        """Draw partners, the MixUp/CutMix choice, λ and boxes for a batch of ``shape``.

        In ``batch`` mode one choice, one λ and one box serve every sample; in ``elem`` mode
        each sample draws its own. Both modes make the same calls on ``generator``, in this
        order: partners, the mix and CutMix coin flips, MixUp λ, CutMix λ, then box centres.

        Args:
            shape: Shape of the inputs, ``(B, ...)``; ``(B, C, *spatial)`` when CutMix may be used.
            generator: The generator that supplies every random number.
            p: Probability that the batch (``batch`` mode) or a sample (``elem`` mode) is mixed.
            alpha_scale: Factor on every α (the ramp's strength with ``ramp_target="alpha"``).

        Returns:
            The batch's :class:`MixParams`.
        """
        self.check_shape(shape)
        return self.draft(int(shape[0]), generator, p, alpha_scale).finish(shape[2:], generator)

    def draft(
        self,
        batch_size: int,
        generator: np.random.Generator,
        p: float = 1.0,
        alpha_scale: float = 1.0,
    ) -> Draft:
        """Draw everything but the CutMix boxes: partners, the coin flips and λ (see :meth:`sample`).

        :meth:`Draft.finish` then draws the boxes for the spatial size of whatever is mixed; for
        a hidden layer that size is only known when the layer runs.
        """
        rng, n = generator, batch_size
        per_batch = self.mode == "batch"
        draws = 1 if per_batch else n
        partner = F._partners(n, rng)
        u_mix, u_cut = rng.random((2, draws))
        lam_mix = F._beta(self._mix_alpha * alpha_scale, draws, rng)
        lam_cut = F._beta(self._cut_alpha * alpha_scale, draws, rng)
        mixed = u_mix < p
        cut = (u_cut < self._cut_prob) & mixed
        lam = np.where(mixed, np.where(cut, lam_cut, lam_mix), 1.0)
        return Draft(partner, lam, cut, per_batch)

    def apply(
        self,
        x: Tensor,
        target: Tensor,
        params: MixParams,
        buffer: Tensor | None = None,
        enabled: Tensor | None = None,
        unlabelled: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mix ``x`` and its targets with drawn parameters; return both (use what is returned).

        ``x`` is mixed in place when it owns its memory (:func:`~lightning_mixup.functional.
        owns_memory`), else in a copy, so data that outlives the batch is never changed.
        ``target`` is never written; the mixed targets are a new tensor.

        Targets get exactly the weights of their inputs, dense masks pixel by pixel. An integer
        index mask stays an index mask and may only be cut, not blended (the caller turns it into
        a soft mask first when a sample is blended: :meth:`MixParams.blends`).

        Args:
            x: ``(B, ...)`` floating inputs (``(B, C, *spatial)`` when CutMix is used).
            target: ``(B, K)`` float targets, ``(B, K, *spatial)`` float soft masks, or
                ``(B, *spatial)`` integer index masks (CutMix only).
            params: Output of :meth:`sample` for this batch.
            buffer: Optional tensor like ``x`` that holds the gathered partners, so a training
                loop allocates no batch-sized tensor per step.
            enabled: Optional 0-d bool tensor on ``x``'s device; where False, the inputs and
                targets come back exactly as they were (NaN and Inf included), without reading the
                flag on the host: the mix then goes into a copy and is selected on the device.
            unlabelled: Optional bool tensor on ``target``'s device, ``(B, *spatial)`` for soft
                masks: True where a pixel carries no label (an ``ignore_index`` pixel turned into
                an all-zero row). A mixed pixel that takes any share from such a pixel is
                unlabelled too: its row is all zeros, so an ignored pixel never becomes a class.

        Returns:
            ``(mixed inputs, mixed targets)``.
        """
        x = self.mix_inputs(x, params, buffer, enabled)
        return x, gated_target(target, params, enabled, unlabelled)

    def mix_inputs(
        self,
        x: Tensor,
        params: MixParams,
        buffer: Tensor | None = None,
        enabled: Tensor | None = None,
    ) -> Tensor:
        """Mix the inputs alone with drawn parameters (see :meth:`apply`); use what is returned."""
        if params.identity:
            return x
        original = x
        if enabled is not None or not F.owns_memory(x):
            x = x.clone(memory_format=torch.contiguous_format)
        device = x.device
        partner = F.to_device(params.partner, device)
        if params.per_batch and params.lo is not None:
            # One box for the whole batch: copy only the box region from the partners.
            region = (slice(None), slice(None), *_box(params))
            x[region] = x[region].index_select(0, partner)
        elif x.is_cpu and x.nbytes >= PAIRWISE_MIN_BYTES * len(x):
            boxes = (
                None
                if params.lo is None or params.hi is None
                else (params.cut, params.lo, params.hi)
            )
            scratch = None if buffer is None else buffer[0]
            F.mix_pairs_(x, params.partner, params.lam, boxes, scratch)
        elif params.per_batch:
            F.mix_(x, partner, 1.0 - float(params.lam.min()), buffer)  # a self-paired sample: 1
        else:
            F.mix_(x, partner, _partner_weights(params, x.shape, device, x.dtype), buffer)
        if enabled is not None:  # where disabled, the inputs come back bit for bit as they were
            x = torch.where(enabled, x, original)
        return x


def _box(params: MixParams) -> tuple[slice, ...]:
    """The batch's one CutMix box as slices over the spatial dimensions."""
    lo, hi = params.lo, params.hi
    assert lo is not None and hi is not None  # called for parameters with a box only
    return tuple(slice(a, b) for a, b in zip(lo[0].tolist(), hi[0].tolist()))


def mix_target(target: Tensor, params: MixParams, unlabelled: Tensor | None = None) -> Tensor:
    """Mix targets with the weights of their inputs, into a new tensor (see :meth:`_Policy.apply`).

    Args:
        target: ``(B, K)`` float rows, ``(B, K, *spatial)`` float soft masks, or ``(B, *spatial)``
            integer index masks (CutMix only).
        params: The batch's parameters.
        unlabelled: Optional bool ``(B, *spatial)``: pixels without a label (see ``apply``).
    """
    if params.identity:
        return target
    partner = F.to_device(params.partner, target.device)
    if target.ndim == 2 and target.is_floating_point():  # image-level rows
        return F.mix_targets(target, partner, params.lam)
    if params.per_batch and params.lo is not None:  # one box: every pixel from one sample
        region = (slice(None),) * (1 + target.is_floating_point()) + _box(params)
        mixed = target.clone()
        mixed[region] = target[region].index_select(0, partner)
        return mixed
    partners = target.index_select(0, partner)
    if not target.is_floating_point():  # an index mask, cut only: weights are 0 or 1
        shape = (target.shape[0], 1, *target.shape[1:])
        take = _partner_weights(params, shape, target.device, torch.float32).squeeze(1) > 0.5
        return torch.where(take, partners, target)
    share = _partner_weights(params, target.shape, target.device, torch.float32)
    mixed = torch.lerp(target, partners, share)
    if unlabelled is not None:
        share = share.squeeze(1)
        lost = (unlabelled & (share < 1)) | (unlabelled.index_select(0, partner) & (share > 0))
        mixed.masked_fill_(lost.unsqueeze(1), 0.0)
    return mixed


def gated_target(
    target: Tensor, params: MixParams, enabled: Tensor | None, unlabelled: Tensor | None = None
) -> Tensor:
    """:func:`mix_target`, with the targets as they were where the device flag ``enabled`` is False."""
    mixed = mix_target(target, params, unlabelled)
    return mixed if enabled is None or mixed is target else torch.where(enabled, mixed, target)


def mix_features(h: Tensor, params: MixParams) -> Tensor:
    """Mix a hidden layer's output out of place: ``λ·h_i + (1-λ)·h_j``, or a CutMix box.

    Autograd may have saved ``h`` for the backward pass, so it is never written; the blend is
    computed in float32 (float64 for float64) and cast back, so a bf16 or fp16 activation under
    autocast keeps its dtype and its λ is not rounded to the half-precision grid.

    Args:
        h: ``(B, ...)`` floating activation; ``(B, C, *spatial)`` when ``params`` holds boxes,
            drawn for that spatial size.
        params: The batch's parameters.

    Returns:
        The mixed activation, of ``h``'s dtype (``h`` itself when ``params`` is the identity).
    """
    if params.identity:
        return h
    wide = torch.float64 if h.dtype == torch.float64 else torch.float32
    partner = F.to_device(params.partner, h.device)
    share = _partner_weights(params, h.shape, h.device, wide)
    mixed = torch.lerp(h.to(wide), h.index_select(0, partner).to(wide), share)
    return mixed.to(h.dtype)


def _partner_weights(
    params: MixParams, shape: Sequence[int], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Per-sample partner share ``1 - λ``, or per-pixel where a sample gets a CutMix box.

    Per pixel it is an outer product of one vector per spatial dimension (box indicators, or
    ``1 - λ`` then ones for a blend), built on the CPU and multiplied on ``device``.
    """
    # float64 inputs get float64 weights; narrower floats get float32 (mix_ casts them last).
    share = (1.0 - params.lam).to(torch.float64 if dtype == torch.float64 else torch.float32)
    ndim = len(shape)
    if params.lo is None or params.hi is None:
        return F.to_device(share, device).view(-1, *([1] * (ndim - 1)))
    n, d = params.lo.shape
    cut = params.cut.view(n, 1)
    weight: Tensor | None = None
    for k, size in enumerate(shape[2:]):
        pos = torch.arange(size)
        inside = ((pos >= params.lo[:, k : k + 1]) & (pos < params.hi[:, k : k + 1])).to(
            share.dtype
        )
        fill = share.view(n, 1) if k == 0 else 1.0
        view = [n, 1] + [1] * d
        view[k + 2] = size
        vector = F.to_device(torch.where(cut, inside, fill), device).view(view)
        weight = vector if weight is None else weight * vector
    assert weight is not None  # CutMix shapes have 1 to 3 spatial dimensions
    return weight


class MixUp(_Policy):
    """MixUp: blend every sample with its partner, λ ~ Beta(α, α).

    Args:
        alpha: Beta concentration α ≥ 0 (the paper uses 0.1-0.4 on ImageNet, 1.0 on CIFAR).
        mode: ``"batch"`` draws one λ per batch, ``"elem"`` one λ per sample.

    Example:
        >>> policy = MixUp(alpha=1.0)
        >>> g = np.random.default_rng(0)
        >>> x, y = torch.rand(4, 3, 8, 8), torch.eye(4)
        >>> x, y = policy.apply(x, y, policy.sample(x.shape, g))
        >>> torch.allclose(y.sum(1), torch.ones(4))
        True
    """

    def __init__(self, alpha: float = 1.0, mode: Mode = "batch") -> None:
        self.alpha = C.number("alpha", alpha, 0.0)
        self.mode = C.choice("mode", mode, _MODES)
        self._mix_alpha = self.alpha


class CutMix(_Policy):
    """CutMix: paste a random box of the partner; λ is the exact kept area after clipping.

    Args:
        alpha: Beta concentration α ≥ 0 for the requested λ (1.0 in the paper).
        mode: ``"batch"`` draws one box per batch, ``"elem"`` one box per sample.
    """

    def __init__(self, alpha: float = 1.0, mode: Mode = "batch") -> None:
        self.alpha = C.number("cutmix_alpha", alpha, 0.0)
        self.mode = C.choice("mode", mode, _MODES)
        self._cut_alpha, self._cut_prob = self.alpha, 1.0


class MixUpOrCutMix(_Policy):
    """Use CutMix with probability ``switch_prob`` and MixUp otherwise.

    In ``"batch"`` mode the choice is made once per batch, in ``"elem"`` mode per sample.

    Args:
        mixup: The MixUp policy.
        cutmix: The CutMix policy (its ``mode`` must match ``mixup.mode``).
        switch_prob: Probability of CutMix, in ``[0, 1]``.
    """

    def __init__(self, mixup: MixUp, cutmix: CutMix, switch_prob: float = 0.5) -> None:
        C.number("switch_prob", switch_prob, 0.0, 1.0)
        if mixup.mode != cutmix.mode:
            raise ValueError(
                f"`mode` must be the same for both policies, got {mixup.mode!r} and {cutmix.mode!r}."
            )
        self.mixup, self.cutmix, self.switch_prob = mixup, cutmix, float(switch_prob)
        self.mode = mixup.mode
        self._mix_alpha, self._cut_alpha = mixup.alpha, cutmix.alpha
        self._cut_prob = self.switch_prob


def make_policy(
    alpha: float, cutmix_alpha: float, switch_prob: float = 0.5, mode: Mode = "batch"
) -> MixUp | CutMix | MixUpOrCutMix:
    """The policy for MixUp ``alpha`` and CutMix ``cutmix_alpha``: one of them, or the switch.

    An α of 0 turns its policy off; each policy checks its own arguments.

    Raises:
        ValueError: If both α are 0 (nothing would be mixed) or an argument is out of range.

    Example:
        >>> type(make_policy(alpha=0.2, cutmix_alpha=0.0)).__name__
        'MixUp'
    """
    mixup, cutmix = MixUp(alpha, mode), CutMix(cutmix_alpha, mode)
    either = MixUpOrCutMix(mixup, cutmix, switch_prob)
    if mixup.alpha == 0 and cutmix.alpha == 0:
        raise ValueError(
            "`alpha` and `cutmix_alpha` are both 0, so nothing would be mixed; set `alpha` > 0 "
            f"for MixUp and/or `cutmix_alpha` > 0 for CutMix, got alpha={alpha!r}, "
            f"cutmix_alpha={cutmix_alpha!r}."
        )
    if cutmix.alpha == 0:
        return mixup
    if mixup.alpha == 0:
        return cutmix
    return either
