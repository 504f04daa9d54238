"""Run folders and checkpoints that an interrupted process cannot corrupt."""
import random
from pathlib import Path

import numpy as np
import torch

from data_preprocessing.outputs import atomic_write
from models import WeightsError, load_backbone, load_weights

from . import distributed as ddp
from .config import DEFAULT_PRETRAINED
from .reporting import TensorBoardLog, plot_confusion, plot_losses, write_metrics

CHECKPOINT_FORMAT = "qcs-fer-checkpoint"


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


def training_checkpoint(model, optimizer, scheduler, state, config, classes):
    """Everything needed to continue a run exactly."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dict(model.config),
        "model": model.state_dict(),
        "classes": list(classes),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states(),
        "run_config": config,
        **state,
    }


def check_training_state(checkpoint, path):
    """The counters a resumed run continues from must be what this project writes."""
    def whole(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    ok = (whole(checkpoint.get("epoch")) and whole(checkpoint.get("step"))
          and whole(checkpoint.get("best_epoch")) and isinstance(checkpoint.get("best_acc"), (int, float))
          and isinstance(checkpoint.get("history"), list)
          and all(key in checkpoint for key in ("optimizer", "scheduler", "rng")))
    if not ok:
        raise WeightsError(f"--resume {path}: its training state (epoch, step, best, history, optimizer, "
                           "scheduler, RNG) is missing or malformed; it cannot be continued")


def restore_training(checkpoint, model, optimizer, scheduler):
    """Load a training checkpoint into the run's objects; returns the run's counters."""
    load_weights(model, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"])
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                best_epoch=checkpoint["best_epoch"], test_at_best=checkpoint.get("test_at_best", 0.0),
                history=list(checkpoint["history"]), partial=checkpoint.get("partial"))


def load_pretrained(model, path):
    """`--pretrained`: fill the IR50 backbone, and only it, from `path`, before any run folder
    exists. Returns the line to log (None when there is nothing to say)."""
    if path in (None, "", "none"):
        return None
    if not Path(path).is_file():
        if path == str(DEFAULT_PRETRAINED) and model.config["size"] != "paper":
            return None
        if path != str(DEFAULT_PRETRAINED):
            raise FileNotFoundError(f"--pretrained {path} does not exist")
        hint = "" if model.config.get("vit_init") == "xavier" else (
            "; from random weights the released ViT initialisation stalls, --vit-init xavier lets it learn "
            "(models/METHOD.md §8)")
        return (f"warning: {path} not found; the IR50 backbone starts from random weights "
                f"(expect far lower accuracy; see README, 'Pretrained IR50'){hint}")
    try:
        filled, source_format = load_backbone(model, path)
    except WeightsError as error:
        raise WeightsError(f"--pretrained {error}") from None
    return (f"backbone initialised from {path} ({source_format} weights): {filled} backbone "
            f"tensors filled; the rest of the network keeps its initialisation")


class Saver:
    """Writes `last.pth`, `best.pth`, the metrics CSV, the plots and, with `--tensorboard`, its
    event file (rank 0 only)."""

    def __init__(self, run_dir, model, optimizer, scheduler, config, classes):
        self.run_dir, self.model, self.optimizer, self.scheduler = run_dir, model, optimizer, scheduler
        self.config, self.classes = config, classes
        self.enabled = ddp.is_main_process()
        self.tensorboard = TensorBoardLog(run_dir, config) if self.enabled and config.get("tensorboard") else None

    def last_path(self):
        return self.run_dir / "last.pth"

    def save_last(self, state):
        if self.enabled:
            atomic_save(self._checkpoint(state), self.last_path())

    def save_best(self, state, confusion):
        if not self.enabled:
            return
        atomic_save(self._checkpoint(state), self.run_dir / "best.pth")
        title = (f"{self.config['arch'].upper()} {self.config['dataset']}, epoch {state['best_epoch']}: "
                 f"{state['best_acc']:.2f}%")
        plot_confusion(self.run_dir / "confusion_best.png", confusion, self.classes, title)
        if self.tensorboard:
            self.tensorboard.log_best(confusion, self.classes, title, state["best_epoch"])

    def report(self, history, num_branches):
        if self.enabled:
            write_metrics(self.run_dir / "metrics.csv", history, num_branches)
            plot_losses(self.run_dir / "losses.png", history, num_branches)
            if self.tensorboard:
                self.tensorboard.log_epoch(history[-1])

    def close(self, history):
        """End of the run (also when it stops early): close the TensorBoard event file."""
        if self.tensorboard:
            self.tensorboard.close(history)
            self.tensorboard = None

    def _checkpoint(self, state):
        return training_checkpoint(self.model, self.optimizer, self.scheduler, state,
                                   self.config, self.classes)
