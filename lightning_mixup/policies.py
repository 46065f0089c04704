"""Mixing policies: ``sample(...)`` draws a batch's parameters, ``apply(...)`` uses them.

Three small objects share one parameter type and one ``apply``:

* :class:`MixUp` — λ ~ Beta(α, α), ``x ← λ·x_i + (1-λ)·x_j`` (Zhang et al., 2018, *mixup: Beyond
  Empirical Risk Minimization*).
* :class:`CutMix` — a box of the partner is pasted over the sample; λ is the kept area (Yun et al.,
  2019, *CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features*).
* :class:`MixUpOrCutMix` — picks CutMix with probability ``switch_prob``, per batch or per sample.

Pairing and the λ convention are those of :mod:`lightning_mixup.functional`: λ is the share of the
sample itself and partners form a random perfect matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_mixup import functional as F

__all__ = ["CutMix", "MixParams", "MixUp", "MixUpOrCutMix", "Mode"]

Mode = Literal["batch", "elem"]
_MODES = ("batch", "elem")


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
    """

    partner: Tensor
    lam: Tensor
    cut: Tensor
    lo: Tensor | None = None
    hi: Tensor | None = None
    per_batch: bool = True

    @property
    def is_identity(self) -> bool:
        """True when applying these parameters would change nothing."""
        return bool((self.lam == 1).all()) or bool(
            (self.partner == torch.arange(len(self.partner))).all()
        )


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")


def _check_alpha(name: str, alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"`{name}` must be a number >= 0, got {alpha!r}.")


class _Policy:
    """Shared ``apply`` and the Bernoulli 'is this mixed at all' draw."""

    mode: Mode

    def _draw_mixed(self, n: int, p: float, generator: torch.Generator) -> Tensor:
        """One Bernoulli(p) per batch (``batch`` mode) or per sample (``elem`` mode), as ``(n,)``."""
        draws = 1 if self.mode == "batch" else n
        u = torch.rand(draws, generator=generator, dtype=torch.float64)
        return (u < p).expand(n)

    def _finish(
        self,
        partner: Tensor,
        lam: Tensor,
        cut: Tensor,
        mixed: Tensor,
        spatial: Sequence[int],
        generator: torch.Generator,
    ) -> MixParams:
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        lo = hi = None
        if bool(cut.any()):
            n = 1 if self.mode == "batch" else len(lam)
            lo, hi, kept = F.cutmix_boxes(lam[:n], spatial, generator)
            lo, hi, kept = lo.expand(len(lam), -1), hi.expand(len(lam), -1), kept.expand(len(lam))
            lam = torch.where(cut, kept, lam)
        # A sample paired with itself (odd batch) is unchanged: it keeps all of itself.
        lam = torch.where(partner == torch.arange(len(lam)), torch.ones_like(lam), lam)
        return MixParams(partner, lam, cut & mixed, lo, hi, per_batch=self.mode == "batch")

    def apply(
        self, x: Tensor, target: Tensor, params: MixParams, buffer: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mix ``x`` in place and return it with the mixed float targets.

        Args:
            x: ``(B, ...)`` floating inputs (``(B, C, *spatial)`` when CutMix is used).
            target: ``(B, K)`` float targets.
            params: Output of :meth:`sample` for this batch.
            buffer: Optional tensor like ``x`` reused to hold the partners.
        """
        return apply_mix(x, target, params, buffer)


def apply_mix(
    x: Tensor, target: Tensor, params: MixParams, buffer: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Apply drawn parameters: blend or paste partners into ``x`` in place; mix the targets."""
    if params.is_identity:
        return x, target
    device = x.device
    partner = params.partner.to(device, non_blocking=True)
    if params.per_batch:
        lam = float(params.lam.min())  # the shared λ; a self-paired sample reports 1
        if bool(params.cut[0]):
            # One box for the whole batch: copy only the box region from the partners.
            region = (slice(None), slice(None)) + tuple(
                slice(int(a), int(b)) for a, b in zip(params.lo[0], params.hi[0])
            )
            x[region] = x[region].index_select(0, partner)
        else:
            F.mix_(x, partner, 1.0 - lam, buffer)
    else:
        lam = params.lam.to(device=device, dtype=torch.float32, non_blocking=True)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        weight = (1.0 - lam).view(shape)
        if bool(params.cut.any()):
            spatial = x.shape[2:]
            mask = F.cutmix_weights(params.lo.to(device), params.hi.to(device), spatial)
            cut = params.cut.to(device).view(shape)
            weight = torch.where(cut, mask.to(weight.dtype), weight)
        F.mix_(x, partner, weight, buffer)
    return x, F.mix_targets(target, partner, params.lam)


class MixUp(_Policy):
    """MixUp: blend every sample with its partner, λ ~ Beta(α, α).

    Args:
        alpha: Beta concentration α > 0 (the paper uses 0.1-0.4 on ImageNet, 1.0 on CIFAR).
        mode: ``"batch"`` draws one λ per batch, ``"elem"`` one λ per sample.

    Example:
        >>> policy = MixUp(alpha=1.0)
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(4, 3, 8, 8), torch.eye(4)
        >>> x, y = policy.apply(x, y, policy.sample(x.shape, g))
        >>> torch.allclose(y.sum(1), torch.ones(4))
        True
    """

    def __init__(self, alpha: float = 1.0, mode: Mode = "batch") -> None:
        _check_alpha("alpha", alpha)
        _check_mode(mode)
        self.alpha, self.mode = float(alpha), mode

    def sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator,
        p: float = 1.0,
        alpha_scale: float = 1.0,
    ) -> MixParams:
        """Draw partners and λ for a batch of ``shape``, mixing with probability ``p``."""
        n = int(shape[0])
        partner = F.sample_partners(n, generator)
        mixed = self._draw_mixed(n, p, generator)
        lam = F.sample_beta(self.alpha * alpha_scale, 1 if self.mode == "batch" else n, generator)
        lam = lam.expand(n)
        return self._finish(
            partner, lam, torch.zeros(n, dtype=torch.bool), mixed, shape[2:], generator
        )


class CutMix(_Policy):
    """CutMix: paste a random box of the partner; λ is the exact kept area after clipping.

    Args:
        alpha: Beta concentration α > 0 for the requested λ (1.0 in the paper).
        mode: ``"batch"`` draws one box per batch, ``"elem"`` one box per sample.
    """

    def __init__(self, alpha: float = 1.0, mode: Mode = "batch") -> None:
        _check_alpha("cutmix_alpha", alpha)
        _check_mode(mode)
        self.alpha, self.mode = float(alpha), mode

    def sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator,
        p: float = 1.0,
        alpha_scale: float = 1.0,
    ) -> MixParams:
        """Draw partners and boxes for a batch of ``shape`` = ``(B, C, *spatial)``."""
        _check_cutmix_shape(shape)
        n = int(shape[0])
        partner = F.sample_partners(n, generator)
        mixed = self._draw_mixed(n, p, generator)
        lam = F.sample_beta(self.alpha * alpha_scale, 1 if self.mode == "batch" else n, generator)
        lam = lam.expand(n)
        return self._finish(
            partner, lam, torch.ones(n, dtype=torch.bool), mixed, shape[2:], generator
        )


class MixUpOrCutMix(_Policy):
    """Use CutMix with probability ``switch_prob`` and MixUp otherwise.

    In ``"batch"`` mode the choice is made once per batch, in ``"elem"`` mode per sample.

    Args:
        mixup: The MixUp policy.
        cutmix: The CutMix policy (its ``mode`` must match ``mixup.mode``).
        switch_prob: Probability of CutMix, in ``[0, 1]``.
    """

    def __init__(self, mixup: MixUp, cutmix: CutMix, switch_prob: float = 0.5) -> None:
        F._check_unit_interval("switch_prob", switch_prob)
        if mixup.mode != cutmix.mode:
            raise ValueError(
                f"`mode` must be the same for both policies, got {mixup.mode!r} and {cutmix.mode!r}."
            )
        self.mixup, self.cutmix, self.switch_prob = mixup, cutmix, float(switch_prob)
        self.mode = mixup.mode

    def sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator,
        p: float = 1.0,
        alpha_scale: float = 1.0,
    ) -> MixParams:
        """Draw partners, the MixUp/CutMix choice, λ and boxes for a batch of ``shape``."""
        n = int(shape[0])
        partner = F.sample_partners(n, generator)
        mixed = self._draw_mixed(n, p, generator)
        draws = 1 if self.mode == "batch" else n
        cut = (
            torch.rand(draws, generator=generator, dtype=torch.float64) < self.switch_prob
        ).expand(n)
        if bool(cut.any()):
            _check_cutmix_shape(shape)
        lam_mix = F.sample_beta(self.mixup.alpha * alpha_scale, draws, generator).expand(n)
        lam_cut = F.sample_beta(self.cutmix.alpha * alpha_scale, draws, generator).expand(n)
        lam = torch.where(cut, lam_cut, lam_mix)
        return self._finish(partner, lam, cut.clone(), mixed, shape[2:], generator)


def _check_cutmix_shape(shape: Sequence[int]) -> None:
    if not 3 <= len(shape) <= 5:
        raise ValueError(
            "CutMix needs inputs of shape (B, C, *spatial) with 1 to 3 spatial dimensions "
            f"(audio, images or volumes), got shape {tuple(shape)}; use MixUp for other inputs."
        )
