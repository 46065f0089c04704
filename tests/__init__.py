"""The test suite.

Every process that imports a test module (the pytest process, and the DDP processes that
``strategy="ddp_spawn"`` starts, which import the module of the LightningModule they run) destroys
its ``torch.distributed`` process group at exit. Lightning does that only for NCCL; a gloo group
left to the interpreter's final teardown sometimes aborts the process ("terminate called without
an active exception", SIGABRT) after the test itself has passed.
"""

import atexit


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


atexit.register(_destroy_process_group)
