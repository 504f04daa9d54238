"""Run folders and checkpoints that an interrupted process cannot corrupt."""
import os
import random
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = "qcs-fer-checkpoint"
RUN_MARKER = "config.json"  # every run folder holds its resolved configuration


def atomic_save(obj, path):
    """`torch.save` to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(text, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    """Everything needed to continue a run exactly (see `utils.train`)."""
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
