"""Two-process CPU DDP (gloo) through the Trainer: per-rank draws, ramp, metrics and resume."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_mixup import MixupCallback
from tests.probes import CriterionModule, DrawRecorder, loader, tiny_trainer

pytestmark = pytest.mark.slow


def ddp_fit(out_dir, cb, epochs=2, ckpt_path=None, callbacks=(), seed=0, **trainer_kw):
    """Fit a DrawRecorder on two spawned CPU processes; return each rank's saved record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed)
    torch.use_deterministic_algorithms(True)
    module = DrawRecorder(str(out_dir), num_classes=32)
    trainer = tiny_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=epochs,
        callbacks=[cb, *callbacks],
        enable_checkpointing=bool(callbacks),
        default_root_dir=out_dir,
        **trainer_kw,
    )
    trainer.fit(module, loader(32, 4, shuffle=True), ckpt_path=ckpt_path)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def draws_equal(a, b):
    if len(a) != len(b):
        return False
    for r, s in zip(a, b):
        if (r["epoch"], r["batch_idx"], r["strength"]) != (
            s["epoch"],
            s["batch_idx"],
            s["strength"],
        ):
            return False
        if (r["partner"] is None) != (s["partner"] is None):
            return False
        if r["partner"] is not None and not (
            torch.equal(r["partner"], s["partner"]) and torch.equal(r["lam"], s["lam"])
        ):
            return False
    return True


def make_cb(**kw):
    return MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", ramp_epochs=2, **kw)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 3-epoch run, shared by the tests that compare against it."""
    return ddp_fit(tmp_path_factory.mktemp("full"), make_cb(), epochs=3)


def test_ranks_draw_differently_follow_one_ramp_and_sync_metrics(full_run):
    r0, r1 = full_run
    assert len(r0["draws"]) == len(r1["draws"]) == 12  # 32 samples, 2 ranks, batch 4, 3 epochs
    assert [d["strength"] for d in r0["draws"]] == [d["strength"] for d in r1["draws"]]
    assert [d["strength"] for d in r0["draws"][:5]] == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert r0["draws"][-1]["strength"] == 1.0
    mixed = [(a, b) for a, b in zip(r0["draws"], r1["draws"]) if a["partner"] is not None]
    assert len(mixed) >= 8
    assert all(
        not (torch.equal(a["partner"], b["partner"]) and torch.equal(a["lam"], b["lam"]))
        for a, b in mixed
    )
    for key in ("train_loss", "mixup/lambda_mean", "mixup/strength"):
        assert r0["metrics"][key] == pytest.approx(r1["metrics"][key], abs=1e-6), key


def test_same_on_all_ranks_gives_identical_draws(tmp_path):
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", seed=3, same_on_all_ranks=True)
    r0, r1 = ddp_fit(tmp_path, cb)
    assert all(d["partner"] is not None for d in r0["draws"])
    assert draws_equal(r0["draws"], r1["draws"])
    # Different data on each rank (DistributedSampler), identical mixing parameters.
    assert not all(torch.equal(a["y"], b["y"]) for a, b in zip(r0["draws"], r1["draws"]))


def test_resume_under_ddp_matches_uninterrupted_run(tmp_path, full_run):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ddp_fit(tmp_path / "first", make_cb(), epochs=1, callbacks=[ckpt])
    second = ddp_fit(
        tmp_path / "second", make_cb(), epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    for rank in (0, 1):
        resumed = first[rank]["draws"] + second[rank]["draws"]
        assert draws_equal(resumed, full_run[rank]["draws"])
        for a, b in zip(resumed, full_run[rank]["draws"]):
            assert torch.equal(a["y"], b["y"])
        for name, value in full_run[rank]["state"].items():
            assert torch.equal(second[rank]["state"][name], value), name


def test_resume_from_mid_epoch_checkpoint_repeats_the_draws(tmp_path, full_run):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    first = ddp_fit(tmp_path / "first", make_cb(), epochs=3, callbacks=[ckpt], max_steps=6)
    assert [(d["epoch"], d["batch_idx"]) for d in first[0]["draws"]][-1] == (1, 1)
    second = ddp_fit(
        tmp_path / "second", make_cb(), epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    for rank in (0, 1):
        resumed = {
            (d["epoch"], d["batch_idx"]): d for d in first[rank]["draws"] + second[rank]["draws"]
        }
        assert set(resumed) == {(d["epoch"], d["batch_idx"]) for d in full_run[rank]["draws"]}
        for d in full_run[rank]["draws"]:
            assert draws_equal([resumed[(d["epoch"], d["batch_idx"])]], [d])


def test_mixing_at_a_layer_draws_per_rank_and_resumes_exactly(tmp_path):
    def cb():
        return MixupCallback(alpha=1.0, mode="elem", mix_at=["input", "layer"], seed=2)

    full = ddp_fit(tmp_path / "full", cb(), epochs=2)
    for rank in full:
        assert {d["at"] for d in rank["draws"]} == {"input", "layer"}
    assert not draws_equal(full[0]["draws"], full[1]["draws"])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ddp_fit(tmp_path / "first", cb(), epochs=1, callbacks=[ckpt])
    second = ddp_fit(tmp_path / "second", cb(), epochs=2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for rank in (0, 1):
        resumed = first[rank]["draws"] + second[rank]["draws"]
        assert draws_equal(resumed, full[rank]["draws"])
        assert [d["at"] for d in resumed] == [d["at"] for d in full[rank]["draws"]]


def test_keep_clean_doubles_each_ranks_batch_with_its_own_draws(tmp_path):
    r0, r1 = ddp_fit(tmp_path, MixupCallback(alpha=1.0, mode="elem", keep_clean=True, seed=1))
    for rank in (r0, r1):
        assert len(rank["draws"]) == 8  # 32 samples, 2 ranks, batch 4, 2 epochs
        for d in rank["draws"]:
            y = d["y"]
            assert y.shape == (8, 32)
            assert torch.equal(y[:4].max(1).values, torch.ones(4))  # clean one-hot rows
            lam = d["lam"].float()[:, None]
            torch.testing.assert_close(y[4:], lam * y[:4] + (1 - lam) * y[:4][d["partner"]])
    assert not draws_equal(r0["draws"], r1["draws"])


def test_loss_mode_under_ddp_keeps_each_ranks_labels_and_mixes_their_losses(tmp_path):
    pl.seed_everything(0)
    module = CriterionModule(num_classes=32, out_dir=str(tmp_path))
    cb = MixupCallback(alpha=1.0, cutmix_alpha=1.0, mode="elem", targets="loss")
    trainer = tiny_trainer(devices=2, strategy="ddp_spawn", max_epochs=1, callbacks=[cb])
    trainer.fit(module, loader(32, 4, shuffle=True, shape=(2, 4, 4)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False)["records"] for r in (0, 1)]
    assert [len(r) for r in ranks] == [4, 4]
    assert not torch.equal(ranks[0][0]["params"].lam, ranks[1][0]["params"].lam)
    for records in ranks:
        for record in records:
            y, params = record["y"], record["params"]
            assert y.dtype == torch.int64 and y.shape == (4,)
            onehot = torch.nn.functional.one_hot(y, 32).float()
            lam = params.lam.float()[:, None]
            soft = lam * onehot + (1 - lam) * onehot[params.partner]
            expected = torch.nn.functional.cross_entropy(record["logits"], soft)
            torch.testing.assert_close(record["loss"], expected, rtol=1e-5, atol=1e-6)
