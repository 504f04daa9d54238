"""A long run under a scheduler: signals, and stop and save decisions agreed by all ranks."""
import multiprocessing
import signal
import sys
import time
from contextlib import contextmanager

import torch

from . import distributed as ddp

# Ctrl-C, a scheduler's SIGTERM and a closed terminal's SIGHUP (POSIX) all stop a run the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
MIN_STOP_GRACE_S = 60  # after a stop signal, a step that has not ended in max(this, 3 × the longest step) is abandoned


class StopTimeout(KeyboardInterrupt):
    """The step under way did not end within the grace time after a stop signal (a hung data
    loader, a stuck rank); the run stops without saving it."""


def leave_signals_to_main(worker_id):
    """DataLoader workers ignore the stop signals (a scheduler signals the whole process group):
    the main process finishes its step, writes last.pth and stops them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def signals_handled_by(control):
    """Route the stop signals to `control` (a `RunControl`) inside the block, and its grace-time
    alarm; the previous handlers come back after."""
    handlers = {signum: control for signum in STOP_SIGNALS}
    if hasattr(signal, "SIGALRM"):
        handlers[signal.SIGALRM] = control.give_up
    previous = {signum: signal.getsignal(signum) for signum in handlers}
    try:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        yield
    finally:
        control.cancel_alarm()
        for signum, old in previous.items():
            signal.signal(signum, old)


def kill_worker_processes():
    """After an abort: kill this process's DataLoader workers, which ignore the stop signals, so
    that a stuck one cannot keep the process from exiting."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=5)


class RunControl:
    """Stop and save decisions, taken after each step by all ranks together.

    Stop: the first stop signal on any rank ends the run after the step under way, which is saved;
    a second one aborts at once, and so does the grace time running out (`StopTimeout`). Save:
    every `save_every_minutes` minutes, a resumable mid-epoch `last.pth` (0: only at epoch ends).
    """

    def __init__(self, save_every_minutes, device):
        self.requested = False
        self.save_every = save_every_minutes * 60.0
        self.device = device
        self.last_save = self.last_decision = time.monotonic()
        self.longest_step = 0.0
        self.grace = None

    def __call__(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            raise KeyboardInterrupt(f"{name} again: stopped at once, without saving the step under way")
        self.requested = True
        self.grace = max(MIN_STOP_GRACE_S, round(3 * self.longest_step))
        if hasattr(signal, "alarm"):
            signal.alarm(self.grace)
        print(f"\n{name}: finishing this step and writing last.pth (a second signal stops at once; so does "
              f"the step not ending within {self.grace} s)", file=sys.stderr)

    def give_up(self, signum, frame):
        raise StopTimeout(f"the step under way did not end within {self.grace} s of the stop signal (a hung "
                          "data loader?); stopped without saving it")

    def cancel_alarm(self):
        if hasattr(signal, "alarm"):
            signal.alarm(0)

    def decide(self):
        """`(stop, save)`, the same on every rank; called after each step."""
        now = time.monotonic()
        self.longest_step, self.last_decision = max(self.longest_step, now - self.last_decision), now
        save_due = bool(self.save_every) and now - self.last_save >= self.save_every
        flags = torch.tensor([float(self.requested), float(save_due)], device=self.device)
        flags = ddp.all_reduce_sum(flags).tolist()
        if flags[0] > 0:
            self.cancel_alarm()  # the step ended: the save that follows is not cut short
        return flags[0] > 0, flags[1] > 0

    def saved(self):
        self.last_save = time.monotonic()

