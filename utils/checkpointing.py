"""Run folders and checkpoints that an interrupted process cannot corrupt."""
import json
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from data_preprocessing.outputs import atomic_write, atomic_write_text
from models import WeightsError, load_backbone, load_weights

from . import distributed as ddp
from .config import DEFAULT_PRETRAINED
from .reporting import plot_confusion, plot_losses, write_metrics

CHECKPOINT_FORMAT = "qcs-fer-checkpoint"
RUN_MARKER = "config.json"  # every run folder holds its resolved configuration


def atomic_save(obj, path):
    """`torch.save` that leaves either the old file or the complete new one (see `atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def new_run_dir(output_dir, run_name):
    """Create the run folder; never reuse one that holds another run's files."""
    if output_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output_dir = Path("log") / f"{run_name}-{stamp}"
        suffix = 1
        while output_dir.exists():
            output_dir = Path("log") / f"{run_name}-{stamp}-{suffix}"
            suffix += 1
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(
            f"--output-dir {output_dir} already holds files of another run; choose a new folder, "
            f"or continue that run with --resume {output_dir / 'last.pth'}")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


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


def restore_training(checkpoint, model, optimizer, scheduler):
    """Load a training checkpoint into the run's objects; returns the run's counters."""
    load_weights(model, checkpoint)
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"])
    return dict(epoch=checkpoint["epoch"], step=checkpoint["step"], best_acc=checkpoint["best_acc"],
                best_epoch=checkpoint["best_epoch"], history=list(checkpoint["history"]),
                partial=checkpoint.get("partial"))


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
        return (f"warning: {path} not found; the IR50 backbone starts from random weights "
                "(expect far lower accuracy; see README, 'Pretrained IR50')")
    try:
        filled, source_format = load_backbone(model, path)
    except WeightsError as error:
        raise WeightsError(f"--pretrained {error}") from None
    return (f"backbone initialised from {path} ({source_format} weights): {filled} backbone "
            f"tensors filled; the rest of the network keeps its initialisation")


def prepare_run_dir(config, resuming):
    """Rank 0 creates (or, when resuming, reuses) the run folder and writes `config.json` there;
    every rank learns its path."""
    run_dir = None
    if ddp.is_main_process():
        if resuming:  # continue in the folder that holds the checkpoint, wherever it is now
            run_dir = Path(config["resume"]).resolve().parent
            if config["output_dir"] and Path(config["output_dir"]).resolve() != run_dir:
                run_dir = new_run_dir(config["output_dir"], "")
        else:
            run_dir = new_run_dir(config["output_dir"], f"{config['dataset']}-{config['arch']}")
        config["output_dir"] = str(run_dir)
        atomic_write_text(json.dumps(config, indent=2, default=str), run_dir / RUN_MARKER)
    return Path(ddp.broadcast_object(str(run_dir) if run_dir else None))


class Saver:
    """Writes `last.pth`, `best.pth`, the metrics CSV and the plots (rank 0 only)."""

    def __init__(self, run_dir, model, optimizer, scheduler, config, classes):
        self.run_dir, self.model, self.optimizer, self.scheduler = run_dir, model, optimizer, scheduler
        self.config, self.classes = config, classes
        self.enabled = ddp.is_main_process()

    def last_path(self):
        return self.run_dir / "last.pth"

    def save_last(self, state):
        if self.enabled:
            atomic_save(self._checkpoint(state), self.last_path())

    def save_best(self, state, confusion):
        if not self.enabled:
            return
        atomic_save(self._checkpoint(state), self.run_dir / "best.pth")
        plot_confusion(self.run_dir / "confusion_best.png", confusion, self.classes,
                       f"{self.config['arch'].upper()} {self.config['dataset']}, epoch "
                       f"{state['best_epoch']}: {state['best_acc']:.2f}%")

    def report(self, history, num_branches):
        if self.enabled:
            write_metrics(self.run_dir / "metrics.csv", history, num_branches)
            plot_losses(self.run_dir / "losses.png", history, num_branches)

    def _checkpoint(self, state):
        return training_checkpoint(self.model, self.optimizer, self.scheduler, state,
                                   self.config, self.classes)
