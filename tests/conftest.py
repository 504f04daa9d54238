"""Shared test set-up: import path, thread count, the slow tier and the session-wide fixtures.

Session fixtures are built once per pytest run, in a `tmp_path_factory` folder, and shared:
tests read them and must not write into them (copy a run folder before resuming it or writing
beside its files).
"""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, torch.get_num_threads()))

FOLDER_CLASSES = ("calm", "joy", "rage")

def free_port():
    """A TCP port free on 127.0.0.1 right now: bind to port 0, read what the OS chose, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture():
    """A port for a test's rendezvous (torchrun's --master_port, a gloo init_method)."""
    return free_port()


@pytest.fixture
def one_thread():
    """Tiny models run many small ops: one torch thread avoids oversubscribing a busy 2-core machine
    (restored after the test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_dir():
    """`../shared` beside the repository; tests using it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


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


def save_checkpoint(path, model, classes, **run_config):
    """`model` saved as this project's inference-ready checkpoint (no training state) with `classes`
    and the run settings given (e.g. dataset, image_size, size, augmentation)."""
    torch.save({"format": "qcs-fer-checkpoint", "config": model.config, "model": model.state_dict(),
                "classes": list(classes), "run_config": run_config}, path)
    return path


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory):
    """A 3-class folder dataset (4 train and 2 test images a class, 32 px), made once a session."""
    return folder_dataset(tmp_path_factory.mktemp("folder") / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, folder_data):
    """The run folder of a tiny QCS trained one epoch on `folder_data`, trained once a session.

    Holds config.json, metrics.csv, last.pth and best.pth (the same weights after one epoch).
    """
    from utils.train import main

    run = tmp_path_factory.mktemp("trained") / "qcs-1-epoch"
    code = main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--output-dir", str(run)))
    assert code == 0, f"training the shared tiny checkpoint failed (exit {code})"
    return run


@pytest.fixture
def trained_run_copy(trained_run, tmp_path):
    """A private copy of `trained_run`, for tests that resume it or give its folder as --output-dir."""
    return Path(shutil.copytree(trained_run, tmp_path / "trained_run"))


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The default demo dataset, generated once a session: (root, what ensure_demo_dataset returned)."""
    from data_preprocessing.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return root, ensure_demo_dataset(root)  # default parameters: what build_dataset("demo", ...) reads


@pytest.fixture(scope="session")
def demo_root(demo_dataset):
    """The folder of the session's default demo dataset."""
    return demo_dataset[0]


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
