"""SAM and the evaluation metrics, against values worked by hand."""
import pytest
import torch

from utils.engine import accuracy_metrics
from utils.sam import SAM


def test_sam_takes_the_gradient_at_the_ascent_point():
    # f(w) = Σ w², w = (3, 4): g = (6, 8), ‖g‖ = 10, ascent point w + 0.5·g/‖g‖ = (3.3, 4.4),
    # gradient there (6.6, 8.8); plain SGD (lr 0.1) from the original w: (3 − .66, 4 − .88).
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = SAM([w], torch.optim.SGD, rho=0.5, lr=0.1)
    (w ** 2).sum().backward()
    optimizer.first_step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.3, 4.4]))
    (w ** 2).sum().backward()
    optimizer.second_step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - 0.66, 4.0 - 0.88]))
    assert w.grad is None
    with pytest.raises(RuntimeError, match="two passes"):
        optimizer.step()


def test_sam_state_round_trip_keeps_learning_rate_in_sync():
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = SAM([w], torch.optim.Adam, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer.base_optimizer, gamma=0.5)
    scheduler.step()
    restored = SAM([w], torch.optim.Adam, lr=1e-3)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.param_groups[0]["lr"] == restored.base_optimizer.param_groups[0]["lr"] == 5e-4


def test_accuracy_and_mean_class_accuracy():
    confusion = torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]])  # class 2 has no test images
    metrics = accuracy_metrics(confusion)
    assert metrics["acc"] == pytest.approx(100 * 9 / 12)
    assert metrics["mean_class_acc"] == pytest.approx(100 * (0.8 + 0.5) / 2)
