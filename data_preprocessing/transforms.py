"""Train and test transforms of the released recipes, on RGB PIL images.

- A: Resize((size, size)), RandomHorizontalFlip, ColorJitter(.2, .2, .2, .1), ToTensor, Normalize,
  RandomErasing(scale=erase_scale).
- B(s, rot r): Resize((s, s)), RandomHorizontalFlip, RandomRotation(r), RandomCrop(size),
  ColorJitter(.2, .2, .2, .1), ToTensor, Normalize, RandomErasing(scale=erase_scale).
- test: Resize((size, size)), or Resize((s, s)) + CenterCrop(size) where B(s) trains (a square
  resize, as released: the aspect ratio of a non-square image is not kept); ToTensor, Normalize.

`size` is 224 in every released recipe; smaller values are for quick CPU runs.
"""
from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_JITTER = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "train_transform", "test_transform", "test_transform_for"]


def train_transform(kind: str = "A", resize: int = 224, rotation: float = 0, erase_scale=(0.02, 0.1),
                    color_jitter: bool = True, size: int = 224) -> T.Compose:
    """The train augmentation `kind` "A" or "B" (B uses `resize` then a random `size` crop)."""
    _check_side(size, "size")
    low, high = (float(v) for v in erase_scale)
    if not 0 < low <= high < 1:
        raise ValueError(f"erase_scale must satisfy 0 < low <= high < 1, got {erase_scale}")
    if rotation < 0:
        raise ValueError(f"rotation must be >= 0 degrees, got {rotation}")
    kind = str(kind).upper()
    if kind == "A":
        steps = [T.Resize((size, size)), T.RandomHorizontalFlip()]
    elif kind == "B":
        _check_side(resize, "resize")
        if resize < size:
            raise ValueError(f"train_transform B: resize ({resize}) must be >= the crop size ({size})")
        steps = [T.Resize((resize, resize)), T.RandomHorizontalFlip()]
        if rotation:
            steps.append(T.RandomRotation(rotation))
        steps.append(T.RandomCrop(size))
    else:
        raise ValueError(f"train_transform kind must be 'A' or 'B', got {kind!r}")
    if color_jitter:
        steps.append(T.ColorJitter(**COLOR_JITTER))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD), T.RandomErasing(scale=(low, high))]
    return T.Compose(steps)


def test_transform(resize: int | None = None, size: int = 224) -> T.Compose:
    """Resize((size, size)) -> ToTensor -> Normalize, or Resize((resize, resize)) + CenterCrop(size)."""
    _check_side(size, "size")
    if resize is None:
        steps = [T.Resize((size, size))]
    else:
        _check_side(resize, "resize")
        if resize < size:
            raise ValueError(f"test_transform: resize ({resize}) must be >= the crop size ({size})")
        steps = [T.Resize((resize, resize)), T.CenterCrop(size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_transform_for(augmentation: dict, size: int = 224) -> T.Compose:
    """The test transform that goes with a train augmentation (a `train_transform` kwargs dict):
    Resize((s, s)) + CenterCrop(size) where B(s) trains, else Resize((size, size))."""
    resize = augmentation.get("resize") if augmentation.get("kind", "A").upper() == "B" else None
    return test_transform(resize=resize, size=size)


def _check_side(value, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{flag} must be a positive int (pixels), got {value!r}")
