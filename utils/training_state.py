"""Writing training checkpoints: a run's counters (`RunState`), its RNG states and the `Saver` of
`last.pth` / `best.pth`, each written atomically (the format: `utils.checkpoint`).
"""
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from data_preprocessing.outputs import atomic_write

from . import distributed as ddp
from .checkpoint import CHECKPOINT_FORMAT


def atomic_save(obj, path):
    """`torch.save` that leaves either the old file or the complete new one (see `atomic_write`).

    Serialised in memory first: torch.save turns a failed file write into an opaque RuntimeError,
    while writing the bytes lets a full disk or a file-size limit reach the caller as OutputError.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), buffered=True)


def rng_states():
    """All RNG states, as types a weights-only `torch.load` can read back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    states = dict(python=random.getstate(), numpy=numpy_state, torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class RunState:
    """A run's counters between steps, saved in every training checkpoint (as top-level keys)."""
    epoch: int = 0  # epochs completed
    step: int = 0  # steps done of epoch `epoch` (non-zero after a mid-epoch save)
    best_acc: float = 0.0  # of the split that selects best.pth (test, or val with --select-on val)
    best_epoch: int = 0
    test_at_best: float = 0.0
    history: list = field(default_factory=list)  # one metrics.csv row per completed epoch
    epoch_sums: dict | None = None  # the training sums (and seconds) of the `step` steps of an unfinished epoch
    world_size: int = 1  # the processes that trained the run when it was saved
    # groups of epoch `epoch` trained by all ranks together: the epoch's first ones (rank r of
    # `world_size` trained groups r, r + world_size, ... below it); None: not recorded (older files)
    groups_done: int | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint):
        return cls(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                   best_epoch=checkpoint["best_epoch"], test_at_best=checkpoint.get("test_at_best", 0.0),
                   history=list(checkpoint["history"]), epoch_sums=checkpoint.get(epoch_sums_key(checkpoint)),
                   world_size=checkpoint.get("world_size", ddp.world_size()),
                   groups_done=checkpoint.get("groups_done"))


def epoch_sums_key(checkpoint):
    """The key of a checkpoint's unfinished-epoch sums: `epoch_sums`, or `partial` in files
    written before it was renamed."""
    return next((key for key in ("epoch_sums", "partial") if checkpoint.get(key) is not None), "epoch_sums")


def training_checkpoint(model, optimizer, scheduler, state, settings, classes, rng_by_rank):
    """Everything needed to continue a run exactly; `rng_by_rank`: every rank's `rng_states()`."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dict(model.config),
        "model": model.state_dict(),
        "classes": list(classes),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_by_rank[0],
        **({"rng_by_rank": rng_by_rank} if len(rng_by_rank) > 1 else {}),
        "run_config": settings.as_dict(),
        **asdict(state),
    }


class Saver:
    """Writes the run's `last.pth` and `best.pth` (rank 0, with every rank's RNG states), each
    atomically; every rank calls it."""

    def __init__(self, run_dir, model, optimizer, scheduler, settings, classes):
        self.run_dir, self.model, self.optimizer, self.scheduler = run_dir, model, optimizer, scheduler
        self.settings, self.classes = settings, classes
        self.enabled = ddp.is_main_process()

    def last_path(self):
        return self.run_dir / "last.pth"

    def save(self, state, name="last.pth"):
        """Write `state` as `name` (`last.pth`, or `best.pth`)."""
        rng_by_rank = ddp.gather_objects(rng_states())  # a collective: every rank takes part
        if self.enabled:
            atomic_save(training_checkpoint(self.model, self.optimizer, self.scheduler, state, self.settings,
                                            self.classes, rng_by_rank), self.run_dir / name)

