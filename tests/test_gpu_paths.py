"""The code paths a GPU run takes (bf16 autocast, channels_last, torch.compile, backbone
recomputation), exercised on the CPU through the real training step and checked against
float32 eager execution, each to a tolerance that fits it."""
import pytest
import torch

from models import build_model
from models.csa import distance_matrix
from utils.device import autocast
from utils.engine import sam_step
from utils.sam import SAM

LR = 1e-3


@pytest.fixture(scope="module")
def group():
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(2, 3, 32, 32, generator=generator) for _ in range(4)]
    return images, torch.tensor([0, 1]), torch.tensor([2, 0])


@pytest.fixture(scope="module")
def initial_state():
    torch.manual_seed(0)
    return build_model("qcs", 3, size="tiny").state_dict()


def one_step(initial_state, group, amp=False, channels_last=False, compile_backend=None,
             checkpoint_backbone=False):
    """Loss and weights after one SAM+Adam step from `initial_state` on `group`."""
    model = build_model("qcs", 3, size="tiny", checkpoint_backbone=checkpoint_backbone)
    model.load_state_dict(initial_state)
    model.train()
    images, y, y_n = group
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = [x.contiguous(memory_format=torch.channels_last) for x in images]
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=LR)
    runner = torch.compile(model, backend=compile_backend) if compile_backend else model
    _, loss, _ = sam_step(runner, optimizer, images, y, y_n, amp=amp)
    return loss.item(), {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def eager(initial_state, group):
    return one_step(initial_state, group)


def max_difference(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_channels_last_step_matches_eager(initial_state, group, eager):
    loss, weights = one_step(initial_state, group, channels_last=True)
    assert loss == pytest.approx(eager[0], rel=1e-5)
    assert max_difference(weights, eager[1]) < 1e-5


def test_backbone_recomputation_matches_eager_and_counts_batch_norm_once(initial_state, group, eager):
    loss, weights = one_step(initial_state, group, checkpoint_backbone=True)
    assert loss == pytest.approx(eager[0], rel=1e-6)
    assert max_difference(weights, eager[1]) < 1e-6
    tracked = [k for k in weights if k.endswith("num_batches_tracked")]
    # two forward passes (SAM), four branches each: 8 updates, not 16 with recomputation
    assert all(weights[k].item() == eager[1][k].item() == 8 for k in tracked)


@pytest.mark.slow  # torch.compile of a training step
def test_compiled_step_matches_eager(initial_state, group, eager):
    loss, weights = one_step(initial_state, group, compile_backend="aot_eager")
    assert loss == pytest.approx(eager[0], rel=1e-5)
    assert max_difference(weights, eager[1]) < 1e-5


def test_bf16_autocast_step_is_close_to_float32(initial_state, group, eager):
    model = build_model("qcs", 3, size="tiny")
    seen = []
    model.base.vit.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with autocast(torch.device("cpu"), True):
        model(*group[0])
    assert seen == [torch.bfloat16]  # the autocast path really runs in bf16
    loss, weights = one_step(initial_state, group, amp=True)
    assert loss == pytest.approx(eager[0], rel=3e-2)
    # Adam's first step moves each weight by about ±lr: bf16 may flip the sign of tiny gradients
    parameters = {name for name, _ in model.named_parameters()}
    assert max_difference({k: weights[k] for k in parameters}, eager[1]) <= 2 * LR + 1e-6
    for key in weights.keys() - parameters:  # batch-norm statistics of bf16 activations
        torch.testing.assert_close(weights[key].double(), eager[1][key].double(), rtol=5e-2, atol=5e-2)


def test_distance_matrix_under_bf16_autocast_keeps_float32_and_the_whole_batch_minimum():
    generator = torch.Generator().manual_seed(1)
    q_y = torch.randn(2, 5, 8, generator=generator).bfloat16()
    q_x = torch.randn(2, 6, 8, generator=generator).bfloat16()
    q_x[1] += 3.0  # sample 1 lies far away: its own minimum distance is well above 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = distance_matrix(q_y, q_x)
    reference = torch.cdist(q_y.double(), q_x.double())
    reference = reference - reference.min()
    assert d.dtype == torch.float32
    assert d.min().item() == 0.0 and d[1].min().item() > 1.0
    torch.testing.assert_close(d.double(), reference, rtol=1e-5, atol=1e-5)


def test_training_cli_runs_the_gpu_options_on_the_cpu(tmp_path):
    from helpers import folder_dataset
    from helpers import tiny_eval_args as eval_args
    from helpers import tiny_training_args as args
    from utils.train import main

    data = folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert main("qcs", args(data, "--epochs", "1", "--amp", "--channels-last", "--checkpoint-backbone",
                            "--output-dir", str(run))) == 0
    config = (run / "config.json").read_text()
    assert '"amp": true' in config and '"channels_last": true' in config
    assert main("qcs", eval_args(data, "--evaluate", str(run / "last.pth"), "--amp", "--channels-last")) == 0
