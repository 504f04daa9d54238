"""SAM and the evaluation metrics, against values worked by hand."""
import pytest
import torch

from utils.engine import NonFiniteLoss, agree_finite
from utils.metrics import EpochMeter, accuracy_metrics, classification_summary
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
    optimizer.base_optimizer.step()  # no gradients: changes nothing, but orders the schedule's step after it
    scheduler.step()
    restored = SAM([w], torch.optim.Adam, lr=1e-3)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.param_groups[0]["lr"] == restored.base_optimizer.param_groups[0]["lr"] == 5e-4


def test_accuracy_and_mean_class_accuracy():
    confusion = torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]])  # class 2 has no test images
    metrics = accuracy_metrics(confusion)
    assert metrics["acc"] == pytest.approx(100 * 9 / 12)
    assert metrics["mean_class_acc"] == pytest.approx(100 * (0.8 + 0.5) / 2)


def test_macro_f1_and_the_per_class_report_by_hand():
    # rows true, columns predicted. a: P 3/3, R 3/4 → F1 6/7; b: P 2/3, R 2/4 → F1 4/7;
    # c is predicted twice but never true → F1 0. Accuracy and mean class accuracy keep their
    # formulas (c, without test images, is skipped from the mean class accuracy).
    confusion = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    metrics = accuracy_metrics(confusion)
    assert metrics["acc"] == pytest.approx(100 * 5 / 8)
    assert metrics["mean_class_acc"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert metrics["macro_f1"] == pytest.approx(100 * (6 / 7 + 4 / 7 + 0) / 3)
    report = classification_summary(confusion, ["a", "b", "c"])
    assert report["a"]["precision"] == pytest.approx(1.0) and report["a"]["recall"] == pytest.approx(0.75)
    assert report["b"]["f1-score"] == pytest.approx(4 / 7) and report["c"]["support"] == 0


def test_epoch_meter_counts_the_full_loss_and_every_branch():
    meter = EpochMeter()
    y, y_n = torch.tensor([0, 1]), torch.tensor([1, 0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # right for y, wrong for y_n
    outputs = (logits, logits, logits, logits, logits, logits, logits, logits)
    meter.update(outputs, torch.arange(8.0), torch.tensor(5.0), y, y_n)
    meter.update(tuple(o[:1] for o in outputs), torch.arange(8.0), torch.tensor(7.0), y[:1], y_n[:1])
    metrics = meter.metrics(torch.device("cpu"))
    assert metrics["loss"] == pytest.approx((5 * 2 + 7 * 1) / 3)  # anchor-weighted, distillation included
    assert metrics["output_losses"] == pytest.approx(list(range(8)))
    assert metrics["train_acc"] == pytest.approx(50.0)  # branches 1, 2 right; 3, 4 (label y_n) wrong
    resumed = EpochMeter(meter.global_state(torch.device("cpu")))
    again = resumed.metrics(torch.device("cpu"))
    assert again.pop("output_losses") == pytest.approx(metrics.pop("output_losses"))
    assert again == pytest.approx(metrics)


def _agree_finite_worker(rank, port, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    loss = torch.tensor(float("nan") if rank == 1 else 1.0)
    try:
        agree_finite(loss, " at step 3", torch.tensor([rank]), None)
        results[rank] = "went on"
    except NonFiniteLoss as error:
        results[rank] = str(error)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(free_port):
    import torch.multiprocessing as mp
    results = mp.Manager().dict()
    mp.spawn(_agree_finite_worker, args=(free_port, results), nprocs=2, join=True)
    assert "loss is nan at step 3" in results[1]
    assert "another rank" in results[0] and "at step 3" in results[0]
