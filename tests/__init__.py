"""The test suite.

Every process that imports a test module (the pytest process, and the DDP processes that
``strategy="ddp_spawn"`` starts, which import the module of the LightningModule they run) destroys
its ``torch.distributed`` process group at exit. Lightning does that only for NCCL; a gloo group
left to the interpreter's final teardown sometimes aborts the process ("terminate called without
an active exception", SIGABRT) after the test itself has passed.
"""

import atexit
import sys


def _destroy_process_group() -> None:
    dist = sys.modules.get("torch.distributed")  # never import torch at exit
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


atexit.register(_destroy_process_group)
