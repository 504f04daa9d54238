"""Shared test set-up: import path, thread count, the slow tier and the session-wide fixtures.

The plain helper functions the test modules import are in helpers.py.

Session fixtures are built once per pytest run, in a `tmp_path_factory` folder, and shared:
tests read them and must not write into them (copy a run folder before resuming it or writing
beside its files).
"""
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, SHARED, folder_dataset, free_port, tiny_training_args

sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, torch.get_num_threads()))


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


@pytest.fixture
def face_extra():
    """Skip without the face-detection extra (requirements-faces.txt)."""
    from utils.tools import faces

    pytest.importorskip("dlib")
    if not faces.available():
        pytest.skip("face-recognition-models is not installed")
