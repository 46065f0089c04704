"""The ``lightning-mixup`` CLI as 2 nodes x 1 process on 127.0.0.1: per-rank draws and resume.

Each "node" is a process started as a cluster scheduler would start it: ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK`` and ``LOCAL_RANK`` in its environment (Lightning's
environment for processes launched from outside), with ``--trainer.num_nodes=2``. The digits config
trains with a :class:`tests.probes.DrawLog` appended to its callbacks, which saves every batch's
draws per global rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: What makes one process one node of two (the command and environment in docs/scaling.md).
NODES = [
    "--trainer.num_nodes=2",
    "--trainer.devices=1",
    "--trainer.strategy=ddp",
    "--trainer.accelerator=cpu",
]
#: Small runs: 3 batches of 16 per rank and epoch; mixing from the first batch on (no ramp).
SMALL = [
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
    "--data.batch_size=16",
    "--trainer.callbacks.ramp_epochs=0",  # the MixupCallback, last in the config's list
]


def two_nodes(out: Path, epochs: int, *args: str) -> list[dict]:
    """Fit the digits config on 2 nodes x 1 process; each global rank's DrawLog record."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(find_free_network_port())
    cmd = [sys.executable, "-m", "lightning_mixup", "fit", "--config=examples/digits.yaml"]
    cmd += [*NODES, *SMALL, f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={out}"]
    cmd += [
        *args,
        "--trainer.callbacks+=tests.probes.DrawLog",
        f"--trainer.callbacks.out_dir={out}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", LOCAL_RANK="0")
    nodes = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, "NODE_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    # One node that fails leaves the other waiting for it: stop both then.
    deadline = time.monotonic() + 300
    while any(n.poll() is None for n in nodes):
        if any(n.poll() not in (None, 0) for n in nodes) or time.monotonic() > deadline:
            for n in nodes:
                if n.poll() is None:
                    n.send_signal(signal.SIGKILL)
        time.sleep(0.2)
    logs = [n.communicate()[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n---\n".join(log[-3000:] for log in logs)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _key(d: dict) -> tuple:
    return d["epoch"], d["batch_idx"]


def same_draw(a: dict, b: dict) -> bool:
    if (a["partner"] is None) != (b["partner"] is None):
        return False
    if a["partner"] is None:
        return True
    return all(torch.equal(a[k], b[k]) for k in ("partner", "lam", "cut"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 2-epoch run on 2 nodes."""
    return two_nodes(tmp_path_factory.mktemp("full"), 2)


def test_two_nodes_are_two_global_ranks_that_draw_differently(full_run):
    for rank, record in enumerate(full_run):
        assert (record["global_rank"], record["node_rank"], record["world_size"]) == (rank, rank, 2)
        assert [_key(d) for d in record["draws"]] == [(e, b) for e in (0, 1) for b in range(3)]
        assert all(d["partner"] is not None for d in record["draws"])
    for a, b in zip(*(r["draws"] for r in full_run)):
        assert not same_draw(a, b), _key(a)
        assert not torch.equal(a["y"], b["y"])  # each node its own share of the data


def test_same_on_all_ranks_draws_the_same_on_both_nodes(tmp_path):
    r0, r1 = two_nodes(tmp_path / "same", 1, "--trainer.callbacks.same_on_all_ranks=true")
    assert len(r0["draws"]) == len(r1["draws"]) == 3
    for a, b in zip(r0["draws"], r1["draws"]):
        assert a["partner"] is not None and same_draw(a, b), _key(a)
        assert not torch.equal(a["y"], b["y"])  # the same draws, on different data


def test_resumed_two_node_run_draws_what_the_uninterrupted_run_drew(tmp_path, full_run):
    first = two_nodes(tmp_path / "first", 1)
    (ckpt,) = (tmp_path / "first" / "checkpoints").glob("*.ckpt")  # the digits config's best
    second = two_nodes(tmp_path / "second", 2, f"--ckpt_path={ckpt}")
    for rank in (0, 1):
        resumed = first[rank]["draws"] + second[rank]["draws"]
        full = full_run[rank]["draws"]
        assert [_key(d) for d in resumed] == [_key(d) for d in full]
        for a, b in zip(resumed, full):
            assert same_draw(a, b), (rank, _key(a))
            assert torch.equal(a["y"], b["y"]), (rank, _key(a))  # same data, same mix
