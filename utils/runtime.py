"""A long run under a scheduler: signals, stop and save decisions agreed by all ranks, and the
sampler that continues an epoch where a saved run left it."""
import signal
import sys
import time
from contextlib import contextmanager

import torch

from . import distributed as ddp

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def leave_signals_to_main(worker_id):
    """DataLoader workers ignore Ctrl-C and SIGTERM (a scheduler signals the whole process group):
    the main process finishes its step, writes last.pth and stops them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def signals_handled_by(handler):
    """Route Ctrl-C and SIGTERM to `handler` inside the block; the previous handlers come back after."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class RunControl:
    """Stop and save decisions, taken after each step by all ranks together.

    Stop: the first Ctrl-C or SIGTERM on any rank (a second Ctrl-C aborts at once). Save: every
    `save_every_minutes` minutes, a resumable mid-epoch `last.pth` (0: only at epoch ends).
    """

    def __init__(self, save_every_minutes, device):
        self.requested = False
        self.save_every = save_every_minutes * 60.0
        self.device = device
        self.last_save = time.monotonic()

    def __call__(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step and writing last.pth "
              "(Ctrl-C again to abort)", file=sys.stderr)

    def decide(self):
        """`(stop, save)`, the same on every rank."""
        save_due = bool(self.save_every) and time.monotonic() - self.last_save >= self.save_every
        flags = torch.tensor([float(self.requested), float(save_due)], device=self.device)
        flags = ddp.all_reduce_sum(flags).tolist()
        return flags[0] > 0, flags[1] > 0

    def saved(self):
        self.last_save = time.monotonic()


class SkipFirst(torch.utils.data.Sampler):
    """The sampler's sequence without its first `count` items (resuming mid-epoch)."""

    def __init__(self, sampler, count):
        self.sampler, self.count = sampler, count

    def __iter__(self):
        iterator = iter(self.sampler)
        for _ in range(self.count):
            next(iterator, None)
        return iterator

    def __len__(self):
        return max(len(self.sampler) - self.count, 0)
