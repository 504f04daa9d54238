"""Plain helper functions shared by the test modules (`from helpers import ...`); fixtures live in conftest.py."""
import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FOLDER_CLASSES = ("calm", "joy", "rage")


def free_port():
    """A TCP port free on 127.0.0.1 right now: bind to port 0, read what the OS chose, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def folder_dataset(root, train_per_class=4, test_per_class=2, side=32):
    """`root/{train,test}/<class>/*.png`: random images, each with its class's colour channel at 255."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(FOLDER_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                pixels[..., label] = 255  # a learnable colour cue
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


def tiny_training_args(data, *extra):
    """Training options for `utils.train.main`: the tiny model on a `folder_dataset`, 32 px, CPU-sized."""
    return ["--dataset", "folder", "--data-root", str(data), "--size", "tiny", "--image-size", "32",
            "--workers", "0", "--pretrained", "none", "-b", "4", "--lr", "1e-3", *extra]


def tiny_eval_args(data, *extra):
    """The data options of `tiny_training_args` without the training ones, which `--evaluate` refuses."""
    return ["--dataset", "folder", "--data-root", str(data), "--size", "tiny", "--image-size", "32",
            "--workers", "0", "-b", "4", *extra]


def save_checkpoint(path, model, classes, **run_config):
    """`model` saved as this project's inference-ready checkpoint (no training state) with `classes`
    and the run settings given (e.g. dataset, image_size, size, augmentation)."""
    torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                "classes": list(classes), "run_config": run_config}, path)
    return path


def unprivileged_prefix():
    """A command prefix under which a read-only folder really is read-only: nothing for a normal user;
    for root, setpriv dropping every capability (the test skips cleanly without it)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv (util-linux) is not installed")
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return prefix


@contextlib.contextmanager
def tmpfs(folder, options):
    """A real tmpfs mounted at `folder` (created here; skips where this process may not mount)."""
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder):
    """Fill the file system of `folder` with one file `filler` until it is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
