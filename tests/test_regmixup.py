"""`keep_clean` (RegMixup): the batch becomes the clean samples followed by their mixed copies."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_mixup import MixupCallback
from tests.probes import (
    BlockNet,
    IdentityData,
    MaskData,
    MaskRecorder,
    Originals,
    RecordingModule,
    loader,
    tiny_trainer,
)

B, K = 4, 16


def rows(y, params):
    """One-hot rows of ``y`` mixed with ``params`` (λ the sample's own share)."""
    one_hot = torch.nn.functional.one_hot(y, K).float()
    lam = params.lam.float()[:, None]
    return lam * one_hot + (1 - lam) * one_hot[params.partner]


def fit(cb, data=None, epochs=1, **kw):
    module = RecordingModule(num_classes=K, in_features=32)
    tiny_trainer(callbacks=[cb], max_epochs=epochs, **kw).fit(module, data or loader(16, B))
    return module


@pytest.mark.parametrize("cutmix", [False, True])
def test_the_batch_is_the_clean_samples_then_their_mixed_copies(cutmix):
    kw = {"alpha": 0.0, "cutmix_alpha": 1.0} if cutmix else {"alpha": 1.0}
    cb = MixupCallback(keep_clean=True, mode="elem", **kw)
    params_seen = []
    module = RecordingModule(num_classes=K)
    original = module.training_step

    def step(batch, batch_idx):
        params_seen.append(cb.last_params)
        return original(batch, batch_idx)

    module.training_step = step
    tiny_trainer(callbacks=[cb]).fit(module, loader(16, B))
    for k, (record, params) in enumerate(zip(module.train_records, params_seen)):
        x, y = record["x"], record["y"]
        labels = torch.arange(B * k, B * k + B)  # IdentityData: sample i is all i, label i
        assert x.shape == (2 * B, 2, 4, 4) and y.shape == (2 * B, K)
        clean = labels.float().view(B, 1, 1, 1).expand(B, 2, 4, 4)
        assert torch.equal(x[:B], clean)
        assert torch.equal(y[:B], torch.nn.functional.one_hot(labels, K).float())
        torch.testing.assert_close(y[B:], rows(labels, params))
        if cutmix:  # every pixel of the mixed half comes from the sample or its partner
            sources = torch.stack([clean, clean[params.partner]])
            assert torch.all((x[B:] == sources[0]) | (x[B:] == sources[1]))
        else:
            lam = params.lam.float().view(B, 1, 1, 1)
            torch.testing.assert_close(x[B:], lam * clean + (1 - lam) * clean[params.partner])


def test_dict_batches_repeat_their_other_per_sample_entries():
    class Ids(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": torch.full((32,), float(i)), "label": i, "id": i, "name": f"s{i}"}

    cb = MixupCallback(alpha=1.0, keep_clean=True, input_key="image", target_key="label")
    seen = []

    class Probe(RecordingModule):
        def training_step(self, batch, batch_idx):
            seen.append({k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()})
            return torch.nn.functional.cross_entropy(self.layer(batch["image"]), batch["label"])

    tiny_trainer(callbacks=[cb]).fit(Probe(num_classes=K), DataLoader(Ids(), batch_size=B))
    for k, batch in enumerate(seen):
        ids = torch.arange(B * k, B * k + B)
        assert torch.equal(batch["id"], torch.cat([ids, ids]))
        assert batch["name"] == [f"s{i}" for i in ids.tolist()] * 2
        assert batch["image"].shape == (2 * B, 32) and batch["label"].shape == (2 * B, K)


@pytest.mark.parametrize(("epoch_strength", "mixed"), [(0, False), (1, True)])
def test_the_ramp_scales_only_the_mixed_half(epoch_strength, mixed):
    # ramp_start_epoch=1: strength 0 in epoch 0 and 1 from epoch 1 on (ramp_epochs=0).
    module = fit(MixupCallback(alpha=1.0, keep_clean=True, ramp_start_epoch=1), epochs=2)
    for record in (r for r in module.train_records if r["epoch"] == epoch_strength):
        x = record["x"]
        assert x.shape[0] == 2 * B  # the clean half is always there, the batch always doubled
        assert torch.equal(x[B:], x[:B]) is not mixed


def test_resume_repeats_the_mixed_half(tmp_path):
    def cb():
        return MixupCallback(alpha=1.0, mode="elem", keep_clean=True)

    full = fit(cb(), epochs=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = RecordingModule(num_classes=K)
    tiny_trainer(callbacks=[cb(), ckpt], max_epochs=1, enable_checkpointing=True).fit(
        first, loader(16, B)
    )
    second = RecordingModule(num_classes=K)
    tiny_trainer(callbacks=[cb()], max_epochs=2).fit(
        second, loader(16, B), ckpt_path=tmp_path / "last.ckpt"
    )
    resumed = first.train_records + second.train_records
    assert len(resumed) == len(full.train_records) == 8
    for a, b in zip(resumed, full.train_records):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_a_hidden_layer_mixes_only_the_second_half():
    module = BlockNet()
    cb = MixupCallback(alpha=1.0, keep_clean=True, mix_at="block1")
    loader8 = DataLoader(IdentityData(16, (2, 8, 8)), batch_size=B)
    tiny_trainer(callbacks=[cb]).fit(module, loader8)
    for k, record in enumerate(module.records):
        raw, seen, params = module.raw["block1"][k], module.seen["block1"][k], record["params"]
        assert raw.shape[0] == 2 * B and torch.equal(raw[:B], raw[B:])  # inputs doubled, unmixed
        assert torch.equal(seen[:B], raw[:B])
        lam = params.lam.float().view(B, 1, 1, 1)
        torch.testing.assert_close(seen[B:], lam * raw[B:] + (1 - lam) * raw[B:][params.partner])
        labels = torch.arange(B * k, B * k + B)
        one_hot = torch.nn.functional.one_hot(labels, 64).float()
        torch.testing.assert_close(record["y"][:B], one_hot)


@pytest.mark.parametrize(("kw", "index"), [({"alpha": 0.0, "cutmix_alpha": 1.0}, True),
                                           ({"alpha": 1.0}, False)])  # fmt: skip
def test_dense_targets_keep_a_clean_half_in_the_mixed_halfs_form(kw, index):
    module = MaskRecorder(5)
    cb = MixupCallback(keep_clean=True, **kw)
    data = DataLoader(MaskData(8, (6, 6), 5), batch_size=B)
    tiny_trainer(callbacks=[Originals(), cb]).fit(module, data)
    for record, (_, mask) in zip(module.records, module.originals):
        y = record["y"]
        if index:
            assert y.dtype == torch.int64 and torch.equal(y[:B], mask)
        else:
            assert y.dtype == torch.float32 and y.shape == (2 * B, 5, 6, 6)
            want = torch.nn.functional.one_hot(mask, 5).permute(0, 3, 1, 2).float()
            assert torch.equal(y[:B], want)


class _Tokens(torch.utils.data.Dataset):
    """Sample i: features all i, label i, a token mask whose first i % 4 + 1 tokens are real."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        mask = torch.arange(8) <= i % 4
        return {"x": torch.full((32,), float(i)), "y": i, "mask": mask}


class _MaskProbe(RecordingModule):
    def __init__(self):
        super().__init__(num_classes=K, in_features=32)
        self.masks = []

    def training_step(self, batch, batch_idx):
        self.masks.append((self.current_epoch, batch["mask"].clone(), batch["x"].shape[0]))
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])


def test_the_mask_is_doubled_with_the_batch_also_when_nothing_is_mixed():
    # Epoch 0 has strength 0 (ramp_start_epoch=1): the batch is doubled unmixed, and so must be
    # its mask; epoch 1 mixes: clean masks first, then the joined ones.
    cb = MixupCallback(
        alpha=1.0, keep_clean=True, ramp_start_epoch=1, input_key="x", target_key="y",
        mask_key="mask",
    )  # fmt: skip
    module = _MaskProbe()
    data = DataLoader(_Tokens(), batch_size=B)
    tiny_trainer(callbacks=[cb], max_epochs=2).fit(module, data)
    assert len(module.masks) == 4
    for epoch, mask, rows in module.masks:
        assert rows == 2 * B and mask.shape == (2 * B, 8)
        assert torch.equal(mask[:B], torch.arange(8) <= (torch.arange(B) % 4)[:, None])
        if epoch == 0:
            assert torch.equal(mask[B:], mask[:B])
        else:  # each mixed sample's real tokens are the union of both sources' real tokens
            assert torch.all(mask[B:] >= mask[:B]) and not torch.equal(mask[B:], mask[:B])
