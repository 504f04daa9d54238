"""`--device-augment`: the released train augmentation split into a worker part (geometric, uint8) and
a batched device part (photometric). Checked against torchvision's PIL pipeline: bit for bit for given
parameters, and in distribution over many draws, with a check that the comparison catches a changed
parameter range."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T

import utils.training_state
from data_preprocessing import IMAGENET_MEAN, IMAGENET_STD, train_transform
from data_preprocessing.device_augment import (
    JITTERS,
    DeviceAugment,
    Photometric,
    adjust_hue,
    reference_adjust_hue,
    split_train_transform,
    step_seed,
)
from helpers import tiny_training_args
from utils.checkpoint import read_checkpoint
from utils.config import UsageError, parse_args, resolve_config
from utils.data import load_training_data
from utils.engine import training_input
from utils.train import main

PIL_JITTERS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
DRAWS = 2000  # per image and pipeline
Z_LIMIT = 5.0  # a difference beyond 5 standard errors: a false alarm about once in 1.7 million comparisons
KS_FACTOR = 2.7  # two-sample Kolmogorov-Smirnov at alpha = 1e-6: D > 2.7 * sqrt((n + m) / (n m))


def textured(seed, side=36):
    """A smooth colour image with noise: every jitter changes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    channels = [128 + 90 * np.sin(x / (4 + c) + y / (7 - c) + seed) + rng.normal(0, 25, (side, side))
                for c in range(3)]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def constant(rgb, side=36):
    return Image.fromarray(np.full((side, side, 3), rgb, dtype=np.uint8))


GRAY = 100  # a gray image only feels brightness: its level after the jitter is int(GRAY · factor)
IMAGES = {"texture 1": textured(1), "texture 2": textured(2), "gray": constant((GRAY,) * 3),
          "orange": constant((200, 90, 40))}


def pil_photometric(image, order, factors, box):
    """torchvision's functional PIL path with given parameters: the jitters in `order`, ToTensor,
    Normalize, erase of `box` (top, left, h, w) with 0."""
    for op in order:
        image = PIL_JITTERS[op](image, float(factors[op]))
    tensor = F.normalize(F.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    top, left, h, w = (int(v) for v in box)
    return F.erase(tensor, top, left, h, w, torch.zeros(1, 1, 1)) if h else tensor


def test_device_part_equals_the_pil_path_bit_for_bit():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 23, 3), dtype=np.uint8) for _ in range(24)]
    arrays += [np.full((20, 23, 3), rng.integers(0, 256, 3), dtype=np.uint8) for _ in range(4)]
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    photometric = Photometric(brightness=(0.0, 2.5), contrast=(0.0, 2.5), saturation=(0.0, 2.5), hue=(-0.5, 0.5),
                              erase_p=0.7)  # wider than released: more clipping and wrap-around
    params = photometric.draw(len(arrays), 20, 23, torch.Generator().manual_seed(1))
    out = photometric.apply(batch.clone(), params)
    assert out.dtype == torch.float32 and out.shape == (len(arrays), 3, 20, 23)
    for n, array in enumerate(arrays):
        expected = pil_photometric(Image.fromarray(array), params["order"][n].tolist(), params["factors"][n],
                                   params["boxes"][n])
        assert torch.equal(out[n], expected), n


@pytest.mark.parametrize("factor", [-0.5, -0.1, -1 / 255, -0.001, 0.0, 0.004, 0.05, 0.1, 0.5])
def test_hue_matches_pil_on_a_grid_of_colours(factor):
    levels = torch.arange(0, 256, 5, dtype=torch.uint8)  # 52 levels: every ordering and tie of r, g, b
    rgb = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(3, 52 * 52, 52)
    expected = np.asarray(F.adjust_hue(Image.fromarray(rgb.permute(1, 2, 0).numpy()), factor))
    x, f = rgb[None].float(), torch.tensor(factor).view(1, 1, 1, 1)
    for implementation in (adjust_hue, reference_adjust_hue):
        got = implementation(x, f)[0].permute(1, 2, 0).to(torch.uint8).numpy()
        assert np.array_equal(got, expected), implementation.__name__


def released_and_split_samples(kind="A", **augmentation):
    """`{image: outputs [DRAWS, 3, 32, 32]}` of the released pipeline, the worker outputs (uint8),
    and the split's photometric part."""
    released = train_transform(kind, image_size=32, **augmentation)
    worker, photometric = split_train_transform(released)
    torch.manual_seed(0)
    pil = {name: torch.stack([released(image) for _ in range(DRAWS)]) for name, image in IMAGES.items()}
    uint8 = {name: torch.stack([worker(image) for _ in range(DRAWS)]) for name, image in IMAGES.items()}
    return pil, uint8, photometric


@pytest.fixture(scope="module")
def samples():
    return released_and_split_samples()


def split_outputs(uint8, photometric, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: photometric(batch, generator) for name, batch in uint8.items()}


def features(name, outputs):
    """Per-draw statistics of one image's outputs: `{statistic: values}`."""
    erased = (outputs == 0).all(dim=1).flatten(1)  # a normalised pixel is never exactly 0 otherwise
    stats = {"erased": erased.any(1).double(), "erased area": erased.double().mean(1)[erased.any(1)]}
    pixels = outputs.double() * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    stats["chroma"] = (pixels.amax(1) - pixels.amin(1)).flatten(1).mean(1)  # what saturation scales
    for c in range(3):
        kept = outputs[:, c].flatten(1)
        stats[f"mean {c}"] = kept.double().mean(1)
        stats[f"std {c}"] = kept.double().std(1)
    if name == "gray":
        level = outputs[:, 0].flatten(1).median(1).values.double() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        stats["brightness level"] = (level * 255).round()
    return stats


def two_sample_failures(a, b):
    """Names of the tests (mean, variance, distribution) that tell samples `a` and `b` apart."""
    failed = []
    standard_error = (a.var() / len(a) + b.var() / len(b)).sqrt()
    if (a.mean() - b.mean()).abs() > Z_LIMIT * standard_error + 1e-12:
        failed.append("mean")
    spread_error = (((a - a.mean()) ** 2).var() / len(a) + ((b - b.mean()) ** 2).var() / len(b)).sqrt()
    if (a.var() - b.var()).abs() > Z_LIMIT * spread_error + 1e-12:
        failed.append("variance")
    grid = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    if (cdf_a - cdf_b).abs().max() > KS_FACTOR * ((len(a) + len(b)) / (len(a) * len(b))) ** 0.5:
        failed.append("distribution")
    return failed


def differences(pil, split):
    """`{"image: statistic": failed tests}` wherever the two pipelines' samples differ."""
    found = {}
    for name in pil:
        reference, candidate = features(name, pil[name]), features(name, split[name])
        for stat, values in reference.items():
            failed = two_sample_failures(values, candidate[stat])
            if failed:
                found[f"{name}: {stat}"] = failed
    return found


@pytest.mark.slow  # over a few seconds on 2 CPU cores
def test_split_pipeline_has_the_released_distribution(samples):
    pil, uint8, photometric = samples
    assert differences(pil, split_outputs(uint8, photometric)) == {}
    erased = torch.cat([features(n, pil[n])["erased"] for n in pil]).mean()
    assert abs(erased - 0.5) < Z_LIMIT * (0.25 / (len(pil) * DRAWS)) ** 0.5  # RandomErasing's p
    levels = features("gray", split_outputs(uint8, photometric)["gray"])["brightness level"]
    assert GRAY * 0.8 - 1 <= levels.min() and levels.max() <= GRAY * 1.2  # int(100 · U[0.8, 1.2])


@pytest.mark.parametrize("changed,caught", [
    (dict(brightness=(0.7, 1.3)), "gray: brightness level"),
    (dict(erase_scale=(0.02, 0.2)), "erased area"),
    (dict(hue=(-0.2, 0.2)), "orange: mean"),
    (dict(erase_p=0.4), "erased"),
    (dict(contrast=(0.7, 1.3)), "texture 2: std"),
    (dict(saturation=(0.7, 1.3)), "chroma"),
])
@pytest.mark.slow  # six more 2,000-draw comparisons
def test_the_comparison_catches_a_changed_range(samples, changed, caught):
    pil, uint8, photometric = samples
    wrong = Photometric(**{**photometric.__dict__, **changed})
    found = differences(pil, split_outputs(uint8, wrong))
    assert any(key.startswith(caught) or key.endswith(caught) for key in found), found


def test_released_photometric_settings_are_read_from_the_released_steps():
    _, photometric = split_train_transform(train_transform("B", resize=236, rotation=12, erase_scale=(0.03, 0.1)))
    assert photometric == Photometric(erase_scale=(0.03, 0.1))
    assert [getattr(photometric, name) for name in JITTERS] == [(0.8, 1.2), (0.8, 1.2), (0.8, 1.2), (-0.1, 0.1)]
    _, plain = split_train_transform(train_transform("A", color_jitter=False))
    assert plain.jitters == [] and plain.erase_scale == (0.02, 0.1)


def test_worker_part_a_is_resize_and_flip_on_uint8():
    released = train_transform("A", image_size=32)
    worker, _ = split_train_transform(released)
    assert [type(step) for step in worker.transforms] == [T.Resize, T.RandomHorizontalFlip, T.PILToTensor]
    assert worker.transforms[0] is released.transforms[0]  # the released step objects themselves
    image = textured(3)
    resized = F.pil_to_tensor(image.resize((32, 32), Image.BILINEAR))
    torch.manual_seed(0)
    outputs = [worker(image) for _ in range(800)]
    assert all(out.dtype == torch.uint8 and out.shape == (3, 32, 32) for out in outputs)
    flipped = [torch.equal(out, resized.flip(2)) for out in outputs]
    assert all(f or torch.equal(out, resized) for f, out in zip(flipped, outputs))  # nothing photometric
    assert abs(np.mean(flipped) - 0.5) < Z_LIMIT * (0.25 / len(outputs)) ** 0.5


def coordinates(side):
    """Red = row, green = column: a crop's offset is its top-left pixel."""
    y, x = np.mgrid[0:side, 0:side]
    return Image.fromarray(np.stack([y, x, np.zeros_like(x)], -1).astype(np.uint8))


def test_worker_part_b_crops_uniformly_and_flips():
    worker, _ = split_train_transform(train_transform("B", resize=36, rotation=0, image_size=32))
    assert [type(step) for step in worker.transforms] == [T.Resize, T.RandomHorizontalFlip, T.RandomCrop,
                                                          T.PILToTensor]
    torch.manual_seed(0)
    outputs = torch.stack([worker(coordinates(36)) for _ in range(1500)])
    assert outputs.dtype == torch.uint8 and outputs.shape[1:] == (3, 32, 32)
    flipped = outputs[:, 1, 0, 0] > outputs[:, 1, 0, -1]
    top, left = outputs[:, 0, 0, 0].long(), torch.where(flipped, 35 - outputs[:, 1, 0, 0], outputs[:, 1, 0, 0]).long()
    assert abs(flipped.double().mean() - 0.5) < Z_LIMIT * (0.25 / len(outputs)) ** 0.5
    counts = torch.bincount(top * 5 + left, minlength=25).double()  # 5 x 5 offsets, uniformly
    expected = len(outputs) / 25
    assert ((counts - expected) ** 2 / expected).sum() < 60  # chi-square, 24 degrees of freedom: p < 1e-5


def test_worker_part_b_rotates_within_its_range():
    released = train_transform("B", resize=36, rotation=10, image_size=32)
    worker, _ = split_train_transform(released)
    assert [type(step) for step in worker.transforms] == [T.Resize, T.RandomHorizontalFlip, T.RandomRotation,
                                                          T.RandomCrop, T.PILToTensor]
    white = constant((255, 255, 255))
    torch.manual_seed(0)
    black = torch.stack([(worker(white) == 0).all(0).double().mean() for _ in range(800)])
    # the same, rotating by angles drawn uniformly in [-10, 10] and cropping at uniform offsets directly
    draws = torch.Generator().manual_seed(1)
    angles = torch.empty(800).uniform_(-10, 10, generator=draws)
    offsets = torch.randint(0, 5, (800, 2), generator=draws).tolist()
    crops = [F.crop(F.rotate(white, float(a)), top, left, 32, 32) for a, (top, left) in zip(angles, offsets)]
    direct = torch.stack([(F.pil_to_tensor(crop) == 0).all(0).double().mean() for crop in crops])
    assert set(torch.unique(worker(white)).tolist()) <= {0, 255}  # filled corners, nothing else
    assert two_sample_failures(black, direct) == []
    assert two_sample_failures(black, direct * 2.5) != []  # e.g. rotations of up to 25 degrees


def test_device_augment_is_a_function_of_seed_rank_epoch_and_step():
    batch = torch.stack([F.pil_to_tensor(textured(s, 24)) for s in range(6)])
    augment = DeviceAugment(Photometric(), seed=3, rank=0)
    first = augment([batch, batch], epoch=1, step=5)
    torch.manual_seed(123)  # the global generator plays no part
    again = augment([batch, batch], epoch=1, step=5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # each branch and image draws its own parameters
    for other in (DeviceAugment(Photometric(), 3, rank=1)([batch], 1, 5), augment([batch], 1, 6),
                  augment([batch], 2, 5), DeviceAugment(Photometric(), 4)([batch], 1, 5)):
        assert not torch.equal(other[0], first[0])
    assert step_seed(3, 0, 1, 5) == step_seed(3, 0, 1, 5) != step_seed(3, 0, 5, 1)


def test_training_input_moves_uint8_then_augments_in_channels_last():
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    augment = DeviceAugment(Photometric(), seed=0)
    (got,) = training_input([batch], torch.device("cpu"), True, augment, epoch=0, step=2)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, augment([batch], 0, 2)[0])
    (plain,) = training_input([batch.float()], torch.device("cpu"), False)
    assert torch.equal(plain, batch.float())


def test_only_the_training_images_take_the_split(folder_data):
    argv = tiny_training_args(folder_data, "--device-augment", "--select-on", "val", "--val-fraction", "0.3")
    data = load_training_data(resolve_config("qcs", parse_args("qcs", argv)), torch.device("cpu"), 0, 1)
    assert isinstance(data.device_augment, DeviceAugment) and data.device_augment.photometric == Photometric()
    image, _ = data.train_set[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    for loader in (data.test_loader, data.val_loader):
        image = loader.dataset[0][0]
        transform = loader.dataset.dataset.transform  # evaluation's IndexedDataset around the split
        assert image.dtype == torch.float32 and isinstance(transform.transforms[-1], T.Normalize)
    plain = load_training_data(resolve_config("qcs", parse_args("qcs", tiny_training_args(folder_data))),
                               torch.device("cpu"), 0, 1)
    assert plain.device_augment is None and plain.train_set[0][0].dtype == torch.float32


def test_a_training_epoch_with_device_augment(folder_data, tmp_path):
    run = tmp_path / "run"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", "--device-augment",
                                          "--output-dir", str(run))) == 0
    assert json.loads((run / "config.json").read_text())["device_augment"] is True


def test_device_augment_is_training_only(tmp_path, capsys):
    assert resolve_config("qcs", parse_args("qcs", ["--device-augment"]))["device_augment"] is True
    assert resolve_config("qcs", parse_args("qcs", []))["device_augment"] is False
    with pytest.raises(UsageError, match="--device-augment only applies to training"):
        resolve_config("qcs", parse_args("qcs", ["--evaluate", str(tmp_path / "x.pth"), "--device-augment"]))
    assert main("qcs", ["--evaluate", str(tmp_path / "x.pth"), "--device-augment"]) == 2
    assert "--device-augment only applies to training" in capsys.readouterr().out


@pytest.mark.slow
def test_split_pipeline_b_has_the_released_distribution():
    pil, uint8, photometric = released_and_split_samples("B", resize=36, rotation=10, erase_scale=(0.03, 0.1))
    assert differences(pil, split_outputs(uint8, photometric)) == {}
    wrong = Photometric(**{**photometric.__dict__, "erase_scale": (0.03, 0.2)})
    assert any(key.endswith("erased area") for key in differences(pil, split_outputs(uint8, wrong)))


@pytest.mark.slow
def test_mid_epoch_resume_with_device_augment_is_bit_exact(folder_data, tmp_path, monkeypatch):
    straight, saving, copy = tmp_path / "straight", tmp_path / "saving", tmp_path / "copy"
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "2", "--device-augment",
                                          "--output-dir", str(straight))) == 0
    real_save = utils.training_state.atomic_save

    def save_and_keep_mid_epoch(checkpoint, path):
        real_save(checkpoint, path)
        if (checkpoint["epoch"], checkpoint["step"]) == (1, 2):  # second epoch, after step 2 of 3
            copy.mkdir()
            real_save(checkpoint, copy / "last.pth")

    monkeypatch.setattr(utils.training_state, "atomic_save", save_and_keep_mid_epoch)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "2", "--device-augment", "--save-every", "1e-9",
                                          "--output-dir", str(saving))) == 0
    monkeypatch.setattr(utils.training_state, "atomic_save", real_save)
    assert main("qcs", ["--resume", str(copy / "last.pth"), "--output-dir", str(tmp_path / "branch")]) == 0
    expected = read_checkpoint(straight / "last.pth")["model"]
    for run in (saving, tmp_path / "branch"):
        got = read_checkpoint(run / "last.pth")["model"]
        assert all(torch.equal(value, got[key]) for key, value in expected.items()), run


@pytest.mark.slow
def test_resume_with_device_augment_is_bit_exact(folder_data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = ("--device-augment",)
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "2", *options, "--output-dir", str(straight))) == 0
    assert main("qcs", tiny_training_args(folder_data, "--epochs", "1", *options, "--output-dir", str(split))) == 0
    assert main("qcs", ["--resume", str(split / "last.pth"), "--epochs", "2"]) == 0
    a, b = read_checkpoint(straight / "last.pth"), read_checkpoint(split / "last.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
