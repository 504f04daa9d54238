"""Training from random weights: the ViT initialisation option, and the engine at the scheduled rate."""
import math
import re

import pytest
import torch
from torch import nn

from models import build_model
from models.vit import TokenViT
from utils.config import DEFAULT_PRETRAINED, parse_args, resolve_config
from utils.engine import StepSettings, train_one_epoch
from utils.resume import load_pretrained
from utils.sam import SAM
from utils.tools.diagnose import image_share
from utils.tools.diagnose import main as diagnose_main


def vit_linears(model):
    """`(name, layer)` for every linear layer inside a TokenViT of `model`."""
    return [(name, layer) for vit in model.modules() if isinstance(vit, TokenViT)
            for name, layer in vit.named_modules() if isinstance(layer, nn.Linear)]


@pytest.mark.parametrize("arch", ["base", "dcs", "qcs"])
def test_xavier_draws_every_vit_linear_from_xavier_uniform(arch):
    torch.manual_seed(0)
    model = build_model(arch, 7, size="tiny", vit_init="xavier")
    linears = vit_linears(model)
    # base ViT: 2 blocks × (qkv, proj, fc1, fc2) + SE head (fc1, fc2, classifier) = 11; a cross ViT adds 7
    assert len(linears) == (11 if arch == "base" else 18)
    for name, linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        weight = linear.weight.detach()
        assert weight.abs().max() <= bound, name
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15), name
        assert torch.count_nonzero(linear.bias) == 0, name


def test_released_init_is_the_std_0_01_normal():
    torch.manual_seed(0)
    model = build_model("qcs", 7, size="tiny")
    for name, linear in vit_linears(model):
        assert linear.weight.std().item() == pytest.approx(0.01, rel=0.15), name
        assert linear.weight.mean().abs().item() < 0.003, name


def test_vit_init_leaves_what_is_built_before_the_vit_unchanged():
    states = {}
    for init in ("released", "xavier"):
        torch.manual_seed(3)
        states[init] = build_model("base", 7, size="tiny", vit_init=init).state_dict()
    before_vit = [k for k in states["released"] if not k.startswith("vit.") or k in ("vit.cls_token", "vit.pos_embed")]
    assert any(k.startswith("backbone.") for k in before_vit)
    for key in before_vit:
        torch.testing.assert_close(states["xavier"][key], states["released"][key], rtol=0, atol=0, msg=key)
    classifier = "vit.head.classifier.weight"
    assert not torch.equal(states["xavier"][classifier], states["released"][classifier])


@pytest.mark.parametrize("seed", [0, 1])
def test_xavier_makes_the_logits_depend_on_the_image(seed, one_thread):
    # The finding of METHOD.md §8: with std-0.01 linears the class token, and so the logits, barely
    # vary from image to image at initialisation; Xavier-uniform weights make them vary.
    spread = {}
    images = torch.randn(16, 3, 56, 56, generator=torch.Generator().manual_seed(100))
    for init in ("released", "xavier"):
        torch.manual_seed(seed)
        model = build_model("base", 7, size="tiny", vit_init=init)
        with torch.no_grad():
            spread[init] = model(images).std(dim=0).mean().item()
    assert spread["released"] < 0.01
    assert spread["xavier"] > 20 * spread["released"]


def test_an_unknown_init_is_refused():
    with pytest.raises(ValueError, match="vit_init 'he'"):
        build_model("base", 7, size="tiny", vit_init="he")


def test_the_engine_trains_each_step_at_the_scheduled_rate():
    # Adam's first update is lr · g / (|g| + eps): each weight with a gradient moves by almost
    # exactly the rate used.
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    before = model.weight.detach().clone()
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    loader = [((x,), y, y, torch.arange(8))]
    steps, stopped = train_one_epoch(model, loader, optimizer, torch.device("cpu"), 1, StepSettings())
    moved = (model.weight.detach() - before).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-2), rtol=1e-4, atol=0)
    assert (steps, stopped) == (1, False)


def test_init_option_is_checked_and_warmup_is_gone():
    with pytest.raises(SystemExit):  # removed: models/METHOD.md §8 found no use for it
        parse_args("qcs", ["--warmup-epochs", "0.5"])
    config = resolve_config("qcs", parse_args("qcs", ["--vit-init", "xavier"]))
    assert config["vit_init"] == "xavier"
    assert build_model("base", 7, size="tiny").config["vit_init"] == "released"  # the default: as released


def test_image_share_by_hand():
    same_for_every_image = torch.arange(6.0).reshape(1, 6).expand(4, 6)
    assert image_share(same_for_every_image) == 0.0
    one_value_per_image = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None].expand(4, 6)
    assert image_share(one_value_per_image) == pytest.approx(100.0)
    # two images, two features [[0, 4], [2, 6]]: variance across the images 1 for each feature;
    # the four entries 0, 4, 2, 6 have mean 3 and variance (9 + 1 + 1 + 9) / 4 = 5: share 1/5
    assert image_share(torch.tensor([[0.0, 4.0], [2.0, 6.0]])) == pytest.approx(20.0)


def test_diagnose_reports_the_class_token_for_each_init(folder_data, capsys, one_thread):
    code = diagnose_main(["--dataset", "folder", "--data-root", str(folder_data), "--image-size", "32",
                          "--images", "12"])
    out = capsys.readouterr().out
    assert code == 0
    shares = {init: float(re.search(rf"--vit-init {init}.*?class token into the SE head\s+([\d.]+)%", out, re.S)[1])
              for init in ("released", "xavier")}
    assert shares["released"] < 5 < 20 < shares["xavier"]
    for group in ("IR50 stages", "token embedding", "ViT blocks", "SE head + classifier"):
        assert out.count(group) == 2
    assert diagnose_main(["--dataset", "folder", "--data-root", str(folder_data / "missing")]) == 2
    with pytest.raises(SystemExit):
        diagnose_main(["--dataset", "folder", "--data-root", str(folder_data), "--images", "1"])
    assert "--images must be at least 2" in capsys.readouterr().err


def test_a_missing_ir50_points_to_the_xavier_init(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/pretrain/ir50.pth here
    for init, hinted in (("released", True), ("xavier", False)):
        note = load_pretrained(build_model("base", 7, vit_init=init), str(DEFAULT_PRETRAINED))
        assert note.startswith(f"warning: {DEFAULT_PRETRAINED} not found")
        assert ("--vit-init xavier lets it learn" in note) == hinted


def test_a_smaller_size_never_reads_the_default_ir50(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_PRETRAINED).parent.mkdir(parents=True)
    (tmp_path / DEFAULT_PRETRAINED).write_bytes(b"a paper-size file a tiny model cannot take")
    note = load_pretrained(build_model("base", 7, size="tiny"), str(DEFAULT_PRETRAINED))
    assert "starts from random weights" in note and "--size paper only" in note
