"""Mixing inside the network (`mix_at`): Manifold Mixup at named layers, and token models."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_mixup import MixupCallback
from tests.probes import BlockNet, IdentityData, TokenClassifier, TokenData, tiny_trainer

MIDDLE_BLOCK = "block1"


def fit(module, cb, n=16, epochs=1, loader=None, **kw):
    loader = loader or DataLoader(IdentityData(n, (2, 8, 8)), batch_size=4)
    trainer = tiny_trainer(callbacks=[cb], max_epochs=epochs, **kw)
    trainer.fit(module, loader, loader if kw.get("limit_val_batches") else None)
    return trainer


def blend(h, params):
    lam = params.lam.to(h.dtype).view(-1, *([1] * (h.ndim - 1)))
    return lam * h + (1 - lam) * h[params.partner]


def one_hot_mix(y, params, k=64):
    rows = torch.nn.functional.one_hot(y, k).float()
    lam = params.lam.float()[:, None]
    return lam * rows + (1 - lam) * rows[params.partner]


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_a_middle_block_is_mixed_and_the_inputs_are_not(mode):
    module = BlockNet()
    fit(module, MixupCallback(alpha=1.0, mode=mode, mix_at=MIDDLE_BLOCK))
    assert len(module.records) == 4
    for k, record in enumerate(module.records):
        params = record["params"]
        assert params.at == MIDDLE_BLOCK and not params.identity
        raw, seen = module.raw[MIDDLE_BLOCK][k], module.seen[MIDDLE_BLOCK][k]
        torch.testing.assert_close(seen, blend(raw, params))
        assert not torch.equal(seen, raw)
        y = torch.arange(4 * k, 4 * k + 4)  # IdentityData: sample i has label i
        torch.testing.assert_close(record["y"], one_hot_mix(y, params))
        # The inputs reached the network unmixed (IdentityData: sample i is all i).
        assert torch.equal(record["x"], y.float().view(4, 1, 1, 1).expand(4, 2, 8, 8))


def test_cutmix_at_a_layer_cuts_on_its_own_grid_and_lambda_is_the_kept_area_there():
    module = BlockNet()
    fit(module, MixupCallback(alpha=0.0, cutmix_alpha=1.0, mode="elem", mix_at="block2"))
    cuts = 0
    for k, record in enumerate(module.records):
        params = record["params"]
        raw, seen = module.raw["block2"][k], module.seen["block2"][k]
        assert raw.shape[2:] == (4, 4)  # the layer's grid, half the inputs' 8×8
        want = raw.clone()
        for i in range(4):
            if params.cut[i]:
                box = tuple(slice(int(a), int(b)) for a, b in zip(params.lo[i], params.hi[i]))
                want[(i, slice(None), *box)] = raw[(params.partner[i], slice(None), *box)]
                area = (params.hi[i] - params.lo[i]).prod().item()
                assert params.lam[i].item() == pytest.approx(1 - area / 16)
                cuts += 1
        assert torch.equal(seen, want)
        # The targets the step read after its forward pass carry the exact kept area.
        y = torch.arange(4 * k, 4 * k + 4)
        torch.testing.assert_close(record["y"], one_hot_mix(y, params))
    assert cuts > 0


def test_cutmix_at_a_flat_layer_is_an_error_naming_the_layer_and_shape():
    cb = MixupCallback(alpha=0.0, cutmix_alpha=1.0, mix_at="head")
    with pytest.raises(
        ValueError, match=r"CutMix at the layer 'head' needs .* got shape \(4, 64\)"
    ):
        fit(BlockNet(), cb)


def test_a_list_of_layers_draws_a_layer_per_batch_and_repeats_it():
    def layers():
        module = BlockNet()
        cb = MixupCallback(alpha=1.0, mix_at=["input", "block1", "block2"], seed=5)
        fit(module, cb, n=64)
        return [r["params"].at for r in module.records]

    first = layers()
    assert set(first) == {"input", "block1", "block2"}
    assert layers() == first


def test_validation_and_a_second_pass_in_the_step_are_left_alone():
    module = BlockNet(second_pass=True)
    fit(module, MixupCallback(alpha=1.0, mix_at=MIDDLE_BLOCK), limit_val_batches=2)
    # Two forward passes per step: the first mixed, the second (a teacher-like pass) not.
    raw, seen = module.raw[MIDDLE_BLOCK], module.seen[MIDDLE_BLOCK]
    steps = len(module.records)
    training = [(raw[2 * k], seen[2 * k], raw[2 * k + 1], seen[2 * k + 1]) for k in range(steps)]
    for first_raw, first_seen, second_raw, second_seen in training:
        assert not torch.equal(first_seen, first_raw)
        assert torch.equal(second_seen, second_raw)
    assert module.val_hooks and set(module.val_hooks) == {2}  # only BlockNet's own recorders
    val_calls = raw[2 * steps :]
    assert all(torch.equal(r, s) for r, s in zip(val_calls, seen[2 * steps :]))


def test_unknown_layer_names_fail_at_setup_with_the_nearest_valid_ones():
    with pytest.raises(ValueError, match=r"'blok1', which is not a submodule .* \['block1'"):
        fit(BlockNet(), MixupCallback(mix_at="blok1"))
    with pytest.raises(ValueError, match="`mix_at` must be 'input', a layer name"):
        MixupCallback(mix_at=[])
    with pytest.raises(ValueError, match="list of distinct such names"):
        MixupCallback(mix_at=["block1", "block1"])


def test_a_layer_that_never_runs_is_an_error_not_a_silent_no_op():
    module = BlockNet()
    module.unused = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="'unused'.*did not run in this training step"):
        fit(module, MixupCallback(alpha=1.0, mix_at="unused"))
    assert not module.unused._forward_hooks  # removed even though the step failed


def test_the_hook_is_removed_when_the_training_step_raises():
    module = BlockNet()
    module.head = torch.nn.Linear(3, 64)  # the wrong width: the step raises after block1 ran
    with pytest.raises(RuntimeError):
        fit(module, MixupCallback(alpha=1.0, mix_at=MIDDLE_BLOCK))
    assert len(module.block1._forward_hooks) == 1  # BlockNet's own recorder only


def test_a_compiled_module_is_refused_at_setup():
    with pytest.raises(ValueError, match="torch.compile"):
        fit(torch.compile(BlockNet()), MixupCallback(alpha=1.0, mix_at=MIDDLE_BLOCK))


def test_bf16_autocast_keeps_the_activation_dtype():
    module = BlockNet()
    fit(module, MixupCallback(alpha=1.0, mix_at=MIDDLE_BLOCK), precision="bf16-mixed")
    for k, record in enumerate(module.records):
        raw, seen = module.raw[MIDDLE_BLOCK][k], module.seen[MIDDLE_BLOCK][k]
        assert raw.dtype == seen.dtype == torch.bfloat16
        want = blend(raw.float(), record["params"]).to(torch.bfloat16)
        torch.testing.assert_close(seen, want, atol=0, rtol=0)  # blended in float32, cast once


def test_gradient_accumulation_mixes_every_batch_once():
    module = BlockNet()
    fit(module, MixupCallback(alpha=1.0, mix_at=MIDDLE_BLOCK), accumulate_grad_batches=2)
    assert len(module.records) == len(module.raw[MIDDLE_BLOCK]) == 4
    for k, record in enumerate(module.records):
        torch.testing.assert_close(
            module.seen[MIDDLE_BLOCK][k], blend(module.raw[MIDDLE_BLOCK][k], record["params"])
        )


def test_resume_repeats_the_layer_choice_and_draws(tmp_path):
    def cb():
        return MixupCallback(alpha=1.0, mode="elem", mix_at=["input", "block1", "block2"])

    full = BlockNet()
    fit(full, cb(), n=32, epochs=2)
    first, second = BlockNet(), BlockNet()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    loader = DataLoader(IdentityData(32, (2, 8, 8)), batch_size=4)
    tiny_trainer(callbacks=[cb(), ckpt], max_epochs=1, enable_checkpointing=True).fit(first, loader)
    tiny_trainer(callbacks=[cb()], max_epochs=2).fit(
        second, loader, ckpt_path=tmp_path / "last.ckpt"
    )
    resumed = first.records + second.records
    assert len(resumed) == len(full.records) == 16
    for a, b in zip(resumed, full.records):
        assert a["params"].at == b["params"].at
        assert torch.equal(a["params"].lam, b["params"].lam)
        assert torch.equal(a["y"], b["y"])


@pytest.mark.parametrize("marks", ["tokens", "padding"])
def test_token_model_mixed_at_its_embedding_keeps_every_real_token_of_both(marks):
    module = TokenClassifier(marks=marks)
    loader = DataLoader(TokenData(16, marks), batch_size=4)
    cb = MixupCallback(
        alpha=1.0,
        mode="elem",
        mix_at="embed",
        input_key="ids",
        target_key="label",
        mask_key="mask",
        mask_marks=marks,
    )
    tiny_trainer(callbacks=[cb]).fit(module, loader)
    assert len(module.records) == 4
    for k, record in enumerate(module.records):
        params = record["params"]
        torch.testing.assert_close(record["mixed"], blend(record["raw"], params))
        lengths = torch.as_tensor([2 + (4 * k + i) % 4 for i in range(4)])
        real = torch.arange(6) < lengths[:, None]
        mixed = params.lam < 1
        union = torch.where(mixed[:, None], real | real[params.partner], real)
        got = record["mask"].bool() if marks == "tokens" else ~record["mask"]
        assert torch.equal(got, union)
        assert record["mask"].dtype == (torch.long if marks == "tokens" else torch.bool)


def test_token_ids_at_the_inputs_point_to_mix_at():
    loader = DataLoader(TokenData(8), batch_size=4)
    cb = MixupCallback(input_key="ids", target_key="label")
    with pytest.raises(TypeError, match="got dtype torch.int64.*`MixupCallback\\(mix_at=<layer"):
        tiny_trainer(callbacks=[cb]).fit(TokenClassifier(), loader)


def test_the_first_tensor_of_a_tuple_list_or_dict_output_is_mixed():
    from collections import namedtuple

    from lightning_mixup._hidden import first_tensor

    h, aux = torch.ones(2, 3), torch.zeros(2)
    Out = namedtuple("Out", "meta features rest")
    for output, where in (
        (h, None),
        (("label", h, aux), 1),
        ([None, h, aux], 1),
        ({"meta": 3, "features": h, "rest": aux}, "features"),
        (Out("meta", h, aux), 1),
    ):
        tensor, put = first_tensor(output)
        assert tensor is h
        new = put(h * 2)
        if where is None:
            assert torch.equal(new, h * 2)
            continue
        assert type(new) is type(output) and torch.equal(new[where], h * 2)
        rest = "rest" if isinstance(output, dict) else 2
        assert new[rest] is aux  # the rest passes through
    assert first_tensor(("no", "tensor"))[0] is None


class CheckpointedNet(BlockNet):
    """BlockNet with its two blocks under activation checkpointing (``reentrant`` None: none)."""

    def __init__(self, reentrant: bool | None) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.reentrant = reentrant

    def forward(self, x):
        def blocks(h):
            return self.block2(self.block1(h))

        h = self.stem(x)
        if self.reentrant is not None:  # the blocks run again in backward, to recompute h
            h = torch.utils.checkpoint.checkpoint(blocks, h, use_reentrant=self.reentrant)
        else:
            h = blocks(h)
        return self.head(self.tap(h).mean(dim=(2, 3)))


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize(
    "options",
    [{"alpha": 1.0, "mix_at": "block1"}, {"alpha": 0.0, "cutmix_alpha": 1.0, "mix_at": "block2"}],
)
def test_activation_checkpointing_recomputes_the_same_mix_in_backward(reentrant, options):
    weights = []
    for net in (CheckpointedNet(None), CheckpointedNet(reentrant)):
        fit(net, MixupCallback(mode="elem", seed=2, **options))
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
        assert all(r["params"] is not None for r in net.records)
    torch.testing.assert_close(weights[1], weights[0])
