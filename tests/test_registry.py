"""The architecture registry: the released entries, and a new variant as one entry plus its wiring.

The toy variant (three branches: anchor, positive, negative; S between the first two, D between
anchor and negative) is registered in this module alone and trained one step through the training
data wiring, the model builder and the SAM step; its groups, targets and CSA weights are checked
against hand computations.
"""
import pytest
import torch
import torch.nn.functional as F

import models.architectures
from data_preprocessing.sampling import LAYOUTS, GroupSampler
from helpers import tiny_training_args
from models import ARCHS, build_model, describe_state_dict, group_loss
from models.architectures import ARCHITECTURES, Architecture, architecture, register
from models.csa import csa_weights
from utils.config import model_from_config, parse_args, resolve_config
from utils.data import load_training_data
from utils.engine import sam_step
from utils.recipes import recipe
from utils.sam import SAM

TOY = Architecture("toy", "TCS", ("anchor", "positive", "negative"), same_class_pairs=((0, 1),),
                   diff_class_pairs=((0, 2),))


@pytest.fixture
def toy(monkeypatch):
    """The toy architecture, registered for one test (the table is restored afterwards)."""
    monkeypatch.setattr(models.architectures, "ARCHITECTURES", dict(ARCHITECTURES))
    return register(TOY)


def test_released_entries_keep_the_released_values():
    assert ARCHS == {"base": 1, "dcs": 2, "qcs": 4}
    assert {name: a.roles for name, a in ARCHITECTURES.items()} == {
        "base": LAYOUTS[1], "dcs": LAYOUTS[2], "qcs": LAYOUTS[4]}
    assert architecture("qcs").targets == ("y", "y", "y_n", "y_n")
    assert [recipe(arch, "AffectNet-7")["anchor_divisor"] for arch in ("dcs", "qcs")] == [8, 12]
    assert [architecture(a).released_cross_block(n) for a, n in (("dcs", 8), ("dcs", 7), ("qcs", 8))] == [
        "prenorm", "inplace", "inplace"]


@pytest.mark.parametrize("arch,matrix,described", [("base", "sd", "base"), ("dcs", "sd", "dcs"),
                                                   ("qcs", "sd", "qcs"), ("qcs", "s", "dcs")])
def test_weights_tell_the_architecture(arch, matrix, described):
    model = build_model(arch, 7, size="tiny", matrix=matrix)
    assert describe_state_dict(model.state_dict()) == (described, 7)


def test_a_name_or_branch_count_is_registered_once(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(Architecture("toy2", "T2", ("anchor", "positive", "negative")))
    with pytest.raises(ValueError, match="registered already"):
        register(Architecture("qcs", "Q", ("anchor", "negative")))
    with pytest.raises(ValueError, match="unknown arch 'toy3'; choose one of base, dcs, qcs, toy"):
        build_model("toy3", 3)


def test_the_toy_weights_by_hand(toy):
    """CSA weights of the toy's group: anchor S₁₂ + k·D₁₃, positive S₁₂, negative k·D₁₃."""
    queries = list(torch.randn(3, 2, 5, 4, dtype=torch.float64).unbind(0))
    k = 1.3

    def shifted_distance(a, b):
        d = torch.cdist(a, b)
        return d - d.min()

    s = shifted_distance(queries[0], queries[1])
    s = s.max() - s
    d = shifted_distance(queries[0], queries[2])
    row_normed = [m / m.norm(dim=2, keepdim=True) for m in (s, d)]  # each row L2-normalised
    column_normed = [m / m.norm(dim=1, keepdim=True) for m in (s, d)]
    expected = [torch.softmax(column_normed[0].sum(2) + k * column_normed[1].sum(2), -1),
                torch.softmax(row_normed[0].sum(1), -1), torch.softmax(k * row_normed[1].sum(1), -1)]
    for got, want in zip(csa_weights(queries, k), expected):
        torch.testing.assert_close(got, want)


def test_a_toy_architecture_trains_one_step(toy, folder_data):
    config = resolve_config("qcs", parse_args("qcs", tiny_training_args(folder_data, "--workers", "0")))
    config.update(arch="toy", num_classes=3)
    data = load_training_data(config, torch.device("cpu"), 0, 1)
    images, y, y_n, indices = next(iter(data.train_loader))
    labels = torch.as_tensor(data.train_set.labels)[indices]
    assert len(images) == 3 and indices.shape == (4, 3)
    assert torch.equal(labels[:, 0], labels[:, 1]) and (labels[:, 0] != labels[:, 2]).all()
    assert torch.equal(y, labels[:, 0]) and torch.equal(y_n, labels[:, 2])

    torch.manual_seed(0)
    model = model_from_config(config)
    assert model.num_branches == 3 and all(block.theta is not None for block in model.cross_blocks)
    outputs = model(*images)
    assert len(outputs) == 6
    targets = (y, y, y_n) * 2
    by_hand = torch.stack([F.cross_entropy(o, t) for o, t in zip(outputs, targets)]).mean()
    torch.testing.assert_close(group_loss(outputs, y, y_n)[0], by_hand)

    before = [p.detach().clone() for p in model.parameters()]
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
    _, loss, per_output = sam_step(model, optimizer, images, y, y_n)
    assert torch.isfinite(loss) and per_output.shape == (6,)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert describe_state_dict(model.state_dict())[1] == 3


def test_group_layouts_are_checked():
    with pytest.raises(ValueError, match="a negative before a negative2"):
        GroupSampler([0, 0, 1, 1], ("anchor", "negative2", "negative"))
    with pytest.raises(ValueError, match="starts with the anchor"):
        GroupSampler([0, 0, 1, 1], ("positive", "anchor"))
