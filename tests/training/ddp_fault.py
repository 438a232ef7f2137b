"""`python -m spfde.run` with one injected fault, for tests/training/test_distributed.py (run under torchrun):
rank 1 flips one mask position after MEST's structure update of epoch 2, as a rank-dependent bug would."""

from __future__ import annotations

import os

from spfde.sparse.mest import MEST

real_start_epoch = MEST.start_epoch


def start_epoch(self, epoch: int) -> None:
    real_start_epoch(self, epoch)
    if epoch == 1 and os.environ.get("RANK") == "1":
        mask = next(iter(self.masks.masks.values()))
        mask.view(-1)[0] ^= True


MEST.start_epoch = start_epoch

if __name__ == "__main__":
    import runpy

    runpy.run_module("spfde.run", run_name="__main__", alter_sys=True)  # as `python -m spfde.run`
