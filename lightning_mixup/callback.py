"""``MixupCallback``: MixUp/CutMix on every training batch, inside the Lightning loop."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor

from lightning_mixup import _checks as C
from lightning_mixup import functional as F
from lightning_mixup._batch import (
    Batch,
    detection_keys,
    join_masks,
    loader_parts,
    repeat_samples,
    unpack,
)
from lightning_mixup._boxes import MIN_VISIBLE, detection_shape, mix_detection
from lightning_mixup._criterion import (
    CRITERION_NAMES,
    ELEM_NEEDS_REDUCTION,
    CriterionSwap,
    LossMix,
    check_mixable,
    find_criterion,
    reducible,
)
from lightning_mixup._guard import Guard
from lightning_mixup._hidden import HiddenLayers
from lightning_mixup._seed import numpy_generator
from lightning_mixup._targets import Targets
from lightning_mixup.policies import MixParams, Mode, gated_target, make_policy
from lightning_mixup.schedule import Schedule

__all__ = ["MixupCallback"]

_DEFAULT_SEED = 0
_RAMP_TARGETS: tuple[Literal["p", "alpha"], ...] = ("p", "alpha")
_MASK_MARKS: tuple[Literal["tokens", "padding"], ...] = ("tokens", "padding")
_TARGETS: tuple[Literal["auto", "soft", "loss"], ...] = ("auto", "soft", "loss")


class MixupCallback(pl.Callback):
    """Mix each training batch with MixUp and/or CutMix right before ``training_step``.

    Implements mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019). The batch must
    be a list or a dict; its inputs (``batch[input_key]``) are replaced by the mixed inputs: in
    place when the batch owns their memory (a fresh tensor from the collate or the device
    transfer), else in a copy, so longer-lived data (slices of a stored dataset) never changes.
    A mixed sample is ``λ·x_i + (1-λ)·x_j`` with target ``λ·y_i + (1-λ)·y_j``: λ is the sample's
    own share (for CutMix, its exact kept area) and partners form a random perfect matching of the
    batch (an odd batch leaves one sample as is). Validation, test, predict and sanity-check
    batches are never touched. Details: the guide "How a batch is mixed".

    Dense targets (segmentation masks, frame or voxel labels) are recognised by shape, an integer
    ``(B, *spatial)`` index mask or a float ``(B, num_classes, *spatial)`` soft mask for inputs
    ``(B, C, *spatial)``, and mixed with the image's own weights, pixel by pixel: an index mask
    stays an index mask under CutMix and becomes float32 soft masks where MixUp blends or
    ``label_smoothing > 0``; an ``ignore_index`` pixel never becomes a class. Details: the guide
    "Segmentation".

    Schedule: the strength ``s`` is 0 before ``ramp_start_epoch``, rises to 1 over
    ``ramp_epochs`` and is 0 from ``stop_epoch`` on (epochs 0-based, progress fractional:
    ``epoch + batch_idx / num_training_batches``). With ``ramp_target="p"`` a batch is mixed with
    probability ``p·s``; with ``"alpha"``, with probability ``p`` using ``α·s``. ``s`` is
    recomputed from the Trainer's counters at every batch, so resuming keeps it.

    Randomness: each batch uses its own NumPy ``Generator`` (PCG64) seeded from ``(seed,
    global_rank, epoch, batch_idx)``, so ranks draw differently, reruns repeat, and a resumed run
    draws exactly what the uninterrupted one would have, without storing RNG state. The global
    RNGs are not used.

    Args:
        alpha: MixUp Beta(α, α) concentration; 0 disables MixUp.
        cutmix_alpha: CutMix Beta(α, α) concentration; 0 disables CutMix.
        switch_prob: With both enabled, probability of choosing CutMix.
        p: Probability that a batch (``mode="batch"``) or a sample (``mode="elem"``) is mixed.
        mode: ``"batch"``: one λ (and box) per batch; ``"elem"``: one per sample.
        label_smoothing: ε applied once, to class-index targets, before mixing.
        num_classes: Number of classes; when None it is read at ``setup`` from
            ``pl_module.num_classes``, ``pl_module.hparams.num_classes`` or
            ``trainer.datamodule.num_classes``.
        ramp_start_epoch: First epoch (0-based) of the ramp; strength is 0 before it.
        ramp_epochs: Epochs to go from strength 0 to 1; 0 means full strength at once.
        ramp_shape: ``"linear"`` or ``"cosine"``.
        ramp_target: What the strength scales: ``"p"`` or ``"alpha"``.
        stop_epoch: From this epoch (0-based) on, no mixing; None never stops.
        ramp_start_step: The schedule in optimizer steps instead of epochs (``trainer.global_step``,
            0-based; for streams, whose epoch may never end, and ``max_steps`` training): first
            step of the ramp. Setting any ``*_step`` argument switches to steps; the ``*_epoch``
            arguments must then keep their defaults.
        ramp_steps: Optimizer steps to go from strength 0 to 1 (0 or None: at once).
        stop_step: From this optimizer step (0-based) on, no mixing; None never stops.
        input_key: Index (list batch) or key (dict batch) of the inputs. None: 0 for a list
            batch; for a dict batch the one of ``"image"``, ``"input"``, ``"inputs"``, ``"x"``,
            ``"pixel_values"``, ``"input_ids"`` that it holds.
        target_key: Index or key of the targets. None: 1 for a list batch; for a dict batch the
            one of ``"label"``, ``"labels"``, ``"target"``, ``"y"``, ``"mask"`` that it holds.
        seed: Seed of the mixing draws; None uses the seed given to ``seed_everything``, else 0.
        same_on_all_ranks: Leave the rank out of the seed so every DDP rank draws the same.
        skip_nonfinite: Check each batch's inputs for NaN/Inf before mixing (one reduction per
            batch). A non-finite batch is left unmixed, so the bad values stay in their own
            samples instead of spreading to their partners; the first one warns, and
            ``mixup/nonfinite_batches`` counts them per epoch. False skips the check.
        name: Optional identifier that sets the checkpoint key (``MixupCallback[name]``). Two
            MixupCallbacks in one Trainer need different names and epoch windows
            (``[ramp_start_epoch, stop_epoch)``) that do not overlap, else ``setup`` refuses them:
            a batch is never mixed twice.
        ignore_index: Value that marks unlabelled pixels in index masks (e.g. 255); None reads it
            at ``setup`` from ``pl_module.ignore_index``, ``pl_module.hparams.ignore_index`` or
            ``trainer.datamodule.ignore_index`` when one is an integer, else every value must be
            a class in ``[0, num_classes)``.
        mix_at: Where to mix: ``"input"``, the name of a submodule as ``named_modules()`` spells
            it (Manifold Mixup: its output is mixed through a forward hook during the step), or a
            list of them, one drawn per batch (see "Mixing inside the network" in the docs).
        mask_key: Index or key of a padding/attention mask in the batch; a mixed sample's mask
            becomes the union of both samples' real tokens.
        mask_marks: ``"tokens"`` when the mask's 1/True marks real tokens, ``"padding"`` when
            True marks padding.
        keep_clean: RegMixup (Pinto et al., NeurIPS 2022): the batch becomes the ``B`` clean
            samples followed by their ``B`` mixed copies, inputs and targets alike (other
            per-sample entries — tensors or lists of ``B`` rows — are repeated), so one mean
            cross-entropy over the batch is the clean loss plus the mixed loss with equal weights.
            The batch is always doubled, also where the schedule mixes nothing (the second half
            is then a clean copy), so its shape never changes; it costs twice the memory and
            compute of a step. ``last_params`` describe the mixed half (its rows ``B..2B-1``).
        targets: ``"soft"``: ``batch[target_key]`` becomes float32 ``(B, num_classes)``
            probabilities, which a loss such as ``F.cross_entropy`` takes as they are. ``"loss"``:
            the targets stay as the dataloader gave them, and during each training step the
            module's criterion attribute is replaced by its mix ``λ·L(ŷ, y_i) + (1-λ)·L(ŷ, y_j)``
            (restored after the step, also when it raises), so its class weights,
            ``ignore_index``, training metrics and labels keep working; ``label_smoothing`` then
            belongs on the criterion (``nn.CrossEntropyLoss(label_smoothing=...)``),
            ``mode="elem"`` needs a criterion with a ``reduction`` attribute (torch's losses), and
            a training step that never calls the criterion is refused. ``"auto"``: ``"loss"``
            when the module has a criterion attribute, else ``"soft"``, said in one info line at
            ``setup``. For cross-entropy both give the same loss; details: the guide "Use it with
            your own module".
        criterion: The module's attribute holding its loss, for ``targets="loss"``/``"auto"``;
            None takes the first of ``criterion``, ``loss_fn``, ``loss_func``, ``loss`` set on
            the module (an ``nn.Module`` or a function, not a method of its class).
        min_visible: Detection targets only: the share of a box's area, in ``(0, 1]``, that
            must stay visible for CutMix to keep it (a partner's box clipped to the pasted
            region, a sample's own box outside it).

    To look at the mixed images, add :class:`~lightning_mixup.evaluation.MixedGridLogger`.

    Raises:
        ValueError: On an out-of-range argument (the message names it and the value received).

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[MixupCallback(alpha=0.2, ramp_epochs=5)],
        ...                      logger=False, enable_checkpointing=False)
    """

    def __init__(
        self,
        alpha: float = 0.2,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        p: float = 1.0,
        mode: Mode = "batch",
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        ramp_start_epoch: int = 0,
        ramp_epochs: int = 0,
        ramp_shape: Literal["linear", "cosine"] = "linear",
        ramp_target: Literal["p", "alpha"] = "p",
        stop_epoch: int | None = None,
        ramp_start_step: int | None = None,
        ramp_steps: int | None = None,
        stop_step: int | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        seed: int | None = None,
        same_on_all_ranks: bool = False,
        skip_nonfinite: bool = True,
        name: str | None = None,
        ignore_index: int | None = None,
        mix_at: str | Sequence[str] = "input",
        mask_key: int | str | None = None,
        mask_marks: Literal["tokens", "padding"] = "tokens",
        keep_clean: bool = False,
        targets: Literal["auto", "soft", "loss"] = "auto",
        criterion: str | None = None,
        min_visible: float = MIN_VISIBLE,
    ) -> None:
        # The policy checks alpha, cutmix_alpha, switch_prob and mode; the rest is checked here.
        self.policy = make_policy(alpha, cutmix_alpha, switch_prob, mode)
        self.alpha, self.cutmix_alpha = float(alpha), float(cutmix_alpha)
        self.switch_prob, self.mode = float(switch_prob), mode
        self.p = C.number("p", p, 0.0, 1.0)
        self.label_smoothing = C.number("label_smoothing", label_smoothing, 0.0, 1.0)
        self.schedule = Schedule.from_arguments(
            ramp_start_epoch, ramp_epochs, stop_epoch, ramp_start_step, ramp_steps, stop_step,
            ramp_shape,
        )  # fmt: skip
        self.ramp_start_epoch, self.ramp_epochs = ramp_start_epoch, ramp_epochs
        self.ramp_start_step, self.ramp_steps = ramp_start_step, ramp_steps
        self.stop_epoch, self.stop_step, self.ramp_shape = stop_epoch, stop_step, ramp_shape
        self.ramp_target = C.choice("ramp_target", ramp_target, _RAMP_TARGETS)
        self.num_classes = None if num_classes is None else C.integer("num_classes", num_classes, 1)
        self.seed = C.optional_integer("seed", seed)
        self.input_key = C.key("input_key", input_key, optional=True)
        self.target_key = C.key("target_key", target_key, optional=True)
        self.same_on_all_ranks = C.boolean("same_on_all_ranks", same_on_all_ranks)
        self.skip_nonfinite = C.boolean("skip_nonfinite", skip_nonfinite)
        self.name = C.identifier("name", name)
        self.ignore_index = C.optional_integer("ignore_index", ignore_index)
        self._layers = HiddenLayers(mix_at)
        self.mix_at = self._layers.mix_at
        self.mask_key = C.key("mask_key", mask_key, optional=True)
        self.mask_marks = C.choice("mask_marks", mask_marks, _MASK_MARKS)
        self.keep_clean = C.boolean("keep_clean", keep_clean)
        self.targets = C.choice("targets", targets, _TARGETS)
        self.criterion = C.identifier("criterion", criterion)
        self.min_visible = C.number("min_visible", min_visible, 0.0, 1.0, open_low=True)
        if self.criterion is not None and self.targets == "soft":
            raise ValueError(
                f"`criterion` = {criterion!r} names the loss that targets='loss' mixes, but "
                "`targets` is 'soft'; use targets='loss' (or 'auto'), or leave `criterion` unset."
            )
        self.last_params: MixParams | dict[str | int, MixParams] | None = None
        """Parameters of the most recent batch, for inspection; None when it was not mixed. With
        several training loaders, a dict from loader name (or index) to the parameters of each
        sub-batch that was mixed."""
        self._seed = seed if seed is not None else _DEFAULT_SEED
        self._salt = 0
        self._targets = Targets(self.num_classes, self.label_smoothing, self.ignore_index)
        self._guard = Guard(self.skip_nonfinite)
        self._buffers: dict[str | int | None, Tensor] = {}  # one per training loader
        self._swap: CriterionSwap | None = None  # set at setup when the loss is mixed
        self._loss_mixes: dict[str | int | None, LossMix] = {}  # this step's, per loader
        self._pending: tuple[Tensor, bool, Tensor | None] | None = None  # a hidden CutMix's

    @property
    def state_key(self) -> str:
        """Checkpoint key: ``"MixupCallback"``, or ``"MixupCallback[name]"`` with a ``name``.

        It does not depend on the other arguments, so a run resumed with changed arguments (say a
        smaller ``alpha``) still finds its state, and keeps drawing from its stored seed.
        """
        return type(self).__name__ if self.name is None else f"{type(self).__name__}[{self.name}]"

    def _arguments(self) -> dict[str, Any]:
        """Every ``__init__`` argument but ``name`` (the checkpoint key), to report changes."""
        keys = inspect.signature(MixupCallback).parameters
        return {key: getattr(self, key) for key in keys if key != "name"}

    def _describe(self) -> str:
        return (
            f"{self.state_key}(alpha={self.alpha:g}, cutmix_alpha={self.cutmix_alpha:g}, "
            f"mixing in {self.schedule})"
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the seed and, when fitting, ``num_classes``; order this instance among siblings.

        ``validate``, ``test`` and ``predict`` mix nothing, so they need no ``num_classes``.
        """
        if self.seed is None:
            env = os.environ.get("PL_GLOBAL_SEED")
            self._seed = int(env) if env is not None else _DEFAULT_SEED
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning, undeclared on Trainer
        siblings = [cb for cb in callbacks if isinstance(cb, MixupCallback)]
        self._salt = next((i for i, cb in enumerate(siblings) if cb is self), 0)
        for other in siblings[: self._salt]:
            if other.schedule.overlaps(self.schedule):
                raise ValueError(
                    f"Two MixupCallbacks would mix the same batches, each on top of the other: "
                    f"{other._describe()} and {self._describe()}. Keep one MixupCallback and set "
                    "its arguments (on the command line, `--trainer.callbacks.<argument>=...` "
                    "changes the last callback of the config's list, where the example configs put "
                    "it), or give the two callbacks windows in the same unit that do not overlap "
                    "(`ramp_start_epoch` of one at or after the other's `stop_epoch`, or the same "
                    "with `*_step`)."
                )
        if stage == "fit":
            if is_param_in_hook_signature(
                pl_module.training_step, "dataloader_iter", explicit=True
            ):
                raise ValueError(
                    f"MixupCallback mixes the batch Lightning gives `training_step`, but "
                    f"{type(pl_module).__name__}.training_step takes `dataloader_iter` and fetches "
                    "its own batches, which no callback sees; take `batch` instead, or mix inside "
                    "the step with a policy of `lightning_mixup.policies` (`sample`, then `apply`)."
                )
            self._swap = self._choose_targets(pl_module)
            self._layers.bind(pl_module)
        swap = self._swap
        criterion = None if swap is None else swap.original
        self._targets.setup(trainer, pl_module, stage, swap is not None, criterion)

    def _choose_targets(self, pl_module: pl.LightningModule) -> CriterionSwap | None:
        """Resolve ``targets``, say which and why in one info line; the swap if the loss is mixed."""
        module = type(pl_module).__name__
        found = None if self.targets == "soft" else find_criterion(pl_module, self.criterion)
        if self.targets == "loss" and found is None:
            raise ValueError(
                f"targets='loss' mixes the module's own criterion, but {module} has none of the "
                f"attributes {CRITERION_NAMES} holding a loss. Set one in `__init__` (e.g. "
                "`self.criterion = nn.CrossEntropyLoss()`) and compute the training loss with it, "
                "name it with `criterion='<attribute>'`, or use targets='soft'."
            )
        if found is None:
            why = (
                "targets='soft' was asked for"
                if self.targets == "soft"
                else f"{module} has none of the attributes {CRITERION_NAMES} holding a loss"
            )
            rank_zero_info(
                f"{self.state_key}: targets='soft' ({why}): training_step receives float32 "
                "(B, num_classes) probability targets (soft masks for dense targets), which its "
                "loss must accept (F.cross_entropy does). To keep the dataloader's class indices, "
                "hold the loss in an attribute such as `self.criterion = nn.CrossEntropyLoss()`, "
                "compute the loss with it and use targets='loss'."
            )
            return None
        name, criterion = found
        check_mixable(criterion, f"`{module}.{name}`")
        chosen = "asked for" if self.targets == "loss" else f"{module} has `{name}`"
        if self.label_smoothing > 0:
            raise ValueError(
                f"`label_smoothing` = {self.label_smoothing!r} smooths soft targets, but "
                f"targets='loss' ({chosen}) keeps the class indices and mixes `{module}.{name}`; "
                "set the smoothing on the criterion (e.g. `nn.CrossEntropyLoss(label_smoothing="
                "0.1)`), or use targets='soft'."
            )
        if self.mode == "elem" and not reducible(criterion):
            what = f"`{module}.{name}` ({type(criterion).__name__})"
            raise ValueError(ELEM_NEEDS_REDUCTION.format(name=what))
        rank_zero_info(
            f"{self.state_key}: targets='loss' ({chosen}): the batch keeps its targets as the "
            f"dataloader gives them, and during each training step `{name}` is replaced by its "
            "mix, λ·loss(prediction, own targets) + (1-λ)·loss(prediction, partner's targets)."
        )
        return CriterionSwap(name, criterion)

    def state_dict(self) -> dict[str, Any]:
        """Store the resolved seed (a resumed run draws the same) and the arguments (to name changes)."""
        return {"seed": self._seed, "arguments": self._arguments()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the interrupted run's seed (unless ``seed`` is given); warn once of changes.

        Lightning calls this after ``setup``, before ``on_fit_start`` or (FSDP, DeepSpeed) after
        it, and in no case before the first training batch, so the seed is set here at once.
        """
        stored_seed = state_dict.get("seed")
        if self.seed is None and stored_seed is not None:
            self._seed = int(stored_seed)
        stored, now = state_dict.get("arguments", {}), self._arguments()
        changed = [
            f"{k}: {stored[k]!r} -> {now[k]!r}" for k in now if k in stored and stored[k] != now[k]
        ]
        if changed:
            draws = (
                "the stored seed is kept, so the draws continue from the interrupted run's stream"
                if self.seed is None or stored_seed is None or self.seed == stored_seed
                else f"`seed` = {self.seed} replaces the stored seed {stored_seed}, so the draws "
                "differ from the interrupted run's"
            )
            rank_zero_warn(
                f"{self.state_key}: resuming with changed arguments ({'; '.join(changed)}); "
                f"{draws}."
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Warn once when an epoch-based schedule cannot move because the epoch never ends."""
        in_epochs = self.schedule.unit == "epochs"
        if in_epochs and self.schedule.moves and trainer.num_training_batches == math.inf:
            rank_zero_warn(
                f"{self.state_key}: the training epoch has no end (a dataloader without a length "
                "and no `limit_train_batches`), so a schedule in epochs (`ramp_start_epoch`="
                f"{self.ramp_start_epoch}, `ramp_epochs`={self.ramp_epochs}, `stop_epoch`="
                f"{self.stop_epoch}) never moves past epoch 0. Give it in optimizer steps instead: "
                "`ramp_start_step`, `ramp_steps`, `stop_step`."
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reset the epoch's statistics (logged at the epoch's end)."""
        self._guard.new_epoch()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Mix ``batch`` according to the schedule at this epoch and batch; write it back.

        With several training dataloaders each sub-batch is mixed on its own, with its own draws;
        a None sub-batch (an exhausted loader) is left alone. See the guide "How a batch is mixed"
        for these and for what is checked on an accelerator without waiting for the device.
        """
        parts = loader_parts(trainer.train_dataloader, batch)
        self._layers.refuse_loaders(parts)
        self._loss_mixes, self._pending = {}, None
        if parts is not None:  # several loaders: one sub-batch each (None: loader exhausted)
            drawn = {
                part: self._mix(trainer, batch[part], batch_idx, part)
                for part in parts
                if batch[part] is not None
            }
            mixed = {part: params for part, params in drawn.items() if params is not None}
            self.last_params = mixed or None
        else:
            self.last_params = self._mix(trainer, batch, batch_idx, None)
        if self._swap is not None:
            self._swap.install(pl_module, self._loss_mixes)

    def _mix(
        self, trainer: pl.Trainer, batch: Any, batch_idx: int, part: str | int | None
    ) -> MixParams | None:
        """Mix one batch (or one loader's sub-batch) in place; return its parameters if mixed.

        At a hidden layer the inputs are left as they are: the targets (and the ``mask_key``
        mask) are mixed here, and the layer's output by a hook during this step.
        """
        key = self._draw_key(trainer, batch_idx) + (() if part is None else (part,))
        boxes = detection_keys(batch, self.input_key, self.target_key)
        if boxes is not None:
            return self._mix_boxes(trainer, batch, boxes, batch_idx, key)
        at = self._layers.choose(key)
        hidden = at != "input"
        container, x, target, keys = unpack(
            batch, self.input_key, self.target_key, part, float_inputs=not hidden
        )
        as_given = self._swap is not None  # targets="loss": the criterion is mixed instead
        form = self._layers.target_form(at, x.shape, target, self.policy)
        on_host = _reads_back_cheaply(x.device)
        strength = self.strength(
            trainer.current_epoch, batch_idx, trainer.num_training_batches, trainer.global_step
        )
        p, scale = (self.p * strength, 1.0) if self.ramp_target == "p" else (self.p, strength)
        y = self._targets.prepare(form, target, on_host)
        clean_x, clean_y, doubled, params, enabled = x, y, False, None, None
        if p > 0 and scale > 0 and x.shape[0] > 1:
            finite = self._guard.finite(x, y, form, on_host)
            if finite is False:  # read on the host: leave the batch as it is
                where = "" if part is None else f" of loader {part!r}"
                self._guard.warn(f"batch {batch_idx}{where} in epoch {trainer.current_epoch}")
            else:
                generator = numpy_generator(*key)
                enabled = finite if isinstance(finite, Tensor) else None  # a device flag, or None
                if hidden:
                    draft = self.policy.draft(x.shape[0], generator, p=p, alpha_scale=scale)
                    params = self._layers.requested(draft, generator, at)
                else:
                    params = self.policy.sample(x.shape, generator, p=p, alpha_scale=scale)
                clean_y, unlabelled = self._targets.rows(form, target, y, params)
                if hidden:
                    mixed_y = self._layers.arm(
                        at, draft, generator, params, None if as_given else clean_y, unlabelled,
                        enabled, self.keep_clean, self._boxes_drawn,
                    )  # fmt: skip
                    y = clean_y if mixed_y is None else mixed_y
                    doubled = self.keep_clean and not params.identity and not as_given
                else:
                    if self.keep_clean and not params.identity:  # mix a copy: keep the clean x
                        x = x.clone(memory_format=torch.contiguous_format)
                    buffer = self._reuse_buffer(x, part)
                    if as_given:  # the inputs; a mask follows the cuts, the loss the blends
                        x = self.policy.mix_inputs(x, params, buffer, enabled)
                        y = _pasted(form, clean_y, params, enabled)
                    else:
                        x, y = self.policy.apply(x, clean_y, params, buffer, enabled, unlabelled)
                if self.mask_key is not None and not params.identity:
                    join_masks(
                        container, self.mask_key, self.mask_marks, params, enabled, self.keep_clean
                    )
        if self.keep_clean:  # the clean samples, then their mixed copies
            x, y = torch.cat([clean_x, x]), y if doubled else torch.cat([clean_y, y])
            # A joined mask already holds 2B rows; an unmixed batch's mask is doubled here.
            repeat_samples(container, len(clean_x), keys)
        container[keys[1]], container[keys[0]] = y, x
        if as_given and params is not None:
            dense = form.endswith("mask")
            mix = LossMix.build(params, y, dense, self.keep_clean, enabled)
            if mix is not None:
                self._loss_mixes[part] = mix
            if hidden:  # a CutMix box on the layer's grid: λ is final when the layer runs
                self._pending = (y, dense, enabled)
        self._guard.add(strength, params)
        return None if params is None or params.identity else params

    def _mix_boxes(
        self,
        trainer: pl.Trainer,
        batch: Batch,
        keys: tuple[int | str, int | str],
        batch_idx: int,
        key: tuple,
    ) -> MixParams | None:
        """Mix a detection batch; every target gets ``"weights"`` (1 when unmixed), mixed or not."""
        if self._layers.choose(key) != "input":
            raise ValueError(
                f"`mix_at` = {self.mix_at!r} mixes a layer inside the network, but detection "
                "boxes follow the images' pixels; mix detection batches at the inputs."
            )
        if self.targets == "loss":
            raise ValueError(
                "targets='loss' mixes a criterion over class targets; detection targets are "
                "mixed as boxes (both samples' boxes, with per-box `weights`), which the "
                "detector's own loss reads. Use targets='auto' or 'soft' with detection batches."
            )
        images, targets = batch[keys[0]], batch[keys[1]]
        shape = detection_shape(images)
        self.policy.check_shape(shape)
        strength = self.strength(
            trainer.current_epoch, batch_idx, trainer.num_training_batches, trainer.global_step
        )
        p, scale = (self.p * strength, 1.0) if self.ramp_target == "p" else (self.p, strength)
        params = MixParams.unmixed(shape[0])
        if p > 0 and scale > 0 and shape[0] > 1:
            finite = not self.skip_nonfinite or all(
                bool(F.all_finite(x)) for x in (images if isinstance(images, list) else [images])
            )
            if finite:
                params = self.policy.sample(shape, numpy_generator(*key), p=p, alpha_scale=scale)
            else:
                self._guard.nonfinite += 1
                self._guard.warn(f"batch {batch_idx} in epoch {trainer.current_epoch}")
        mixed_x, mixed_y = mix_detection(images, targets, params, self.min_visible)
        if self.keep_clean:  # the clean samples (weights 1), then their mixed copies
            unmixed = MixParams.unmixed(shape[0])
            clean_x, clean_y = mix_detection(images, targets, unmixed, check_values=False)
            if isinstance(mixed_x, Tensor) and isinstance(clean_x, Tensor):
                mixed_x = torch.cat([clean_x, mixed_x])
            else:
                mixed_x = [*clean_x, *mixed_x]
            mixed_y = [*clean_y, *mixed_y]
            repeat_samples(batch, shape[0], keys)
        batch[keys[1]], batch[keys[0]] = mixed_y, mixed_x
        mixed = None if params.identity else params
        self._guard.add(strength, mixed)
        return mixed

    def _boxes_drawn(self, requested: MixParams, final: MixParams) -> None:
        """A hidden layer's CutMix boxes were drawn: count and report the exact parameters."""
        self._guard.correct(requested, final)
        self.last_params = None if final.identity else final
        if self._swap is not None and self._pending is not None:
            y, dense, enabled = self._pending
            self._swap.update(None, LossMix.build(final, y, dense, self.keep_clean, enabled))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Remove the step's hooks; refuse a step that mixed only half of what it must."""
        try:
            self._layers.finish_step(outputs)
        finally:
            if self._swap is not None:
                self._swap.finish_step(outputs)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Remove any hook left by a training step that raised; restore the criterion."""
        self._layers.disarm_all()
        if self._swap is not None:
            self._swap.restore()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the epoch's mean strength and λ, and the count of non-finite batches."""
        # A module's `on_train_batch_start` returning -1 ends the epoch before that step's
        # `on_train_batch_end`: its hooks and criterion stand-in must not outlive the epoch.
        self._layers.disarm_all()
        if self._swap is not None:
            self._swap.restore()
        prefix = "mixup" if self._salt == 0 else f"mixup_{self._salt}"
        self._guard.log(trainer, pl_module, prefix)

    # ------------------------------------------------------------------ helpers
    def strength(
        self, epoch: int, batch_idx: int = 0, batches_per_epoch: float = math.inf, step: int = 0
    ) -> float:
        """Schedule strength in ``[0, 1]``: at ``epoch`` and ``batch_idx``, or at ``step``.

        ``step`` (the optimizer step, 0-based) is used when the schedule is in steps.
        """
        return self.schedule.strength(epoch, batch_idx, batches_per_epoch, step)

    def _draw_key(self, trainer: pl.Trainer, batch_idx: int) -> tuple[int, ...]:
        rank = 0 if self.same_on_all_ranks else trainer.global_rank
        return self._seed, rank, trainer.current_epoch, batch_idx, self._salt

    def _reuse_buffer(self, x: Tensor, part: str | int | None) -> Tensor:
        buf = self._buffers.get(part)
        if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
            buf = self._buffers[part] = torch.empty_like(x, memory_format=torch.contiguous_format)
        return buf


def _pasted(form: str, target: Tensor, params: MixParams, enabled: Tensor | None) -> Tensor:
    """The targets under ``targets="loss"``: masks get the partner's in CutMix boxes, else as given."""
    if not form.endswith("mask"):
        return target
    return gated_target(target, params.cuts_only(), enabled)


def _reads_back_cheaply(device: torch.device) -> bool:
    """Whether reading a value of ``device`` on the host costs nothing (no queue to wait for)."""
    return device.type == "cpu"
