"""Train and test transforms of the released recipes, on RGB PIL images.

- A: Resize((image_size, image_size)), RandomHorizontalFlip, ColorJitter(.2, .2, .2, .1), ToTensor,
  Normalize, RandomErasing(scale=erase_scale).
- B(s, rot r): Resize((s, s)), RandomHorizontalFlip, RandomRotation(r), RandomCrop(image_size),
  ColorJitter(.2, .2, .2, .1), ToTensor, Normalize, RandomErasing(scale=erase_scale).
- test: Resize((image_size, image_size)), or Resize((s, s)) + CenterCrop(image_size) where B(s)
  trains (a square resize, as released: the aspect ratio of a non-square image is not kept);
  ToTensor, Normalize.

`image_size` (the side in pixels) is 224 in every released recipe; smaller values are for quick
CPU runs. (`size` elsewhere in the project is the model preset.)
"""
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The largest image side any transform accepts: far above the released 224 and 236, and a bound on
# the memory a mistyped or hostile saved setting can ask for (an N×N RGB float image is 12·N² bytes).
MAX_IMAGE_SIDE = 1024

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "train_transform", "test_transform", "test_transform_for",
           "describe_transform"]


def train_transform(kind: str = "A", resize: int | None = None, rotation: float | None = None,
                    erase_scale=(0.02, 0.1), color_jitter: bool = True, image_size: int = 224) -> T.Compose:
    """The train augmentation `kind` "A" or "B" (B: Resize((resize, resize)), then a random
    `image_size` crop). `resize` and `rotation` belong to B; giving them to A is refused."""
    _check_side(image_size, "image_size")
    low, high = (float(v) for v in erase_scale)
    if not 0 < low <= high < 1:
        raise ValueError(f"erase_scale must satisfy 0 < low <= high < 1, got {erase_scale}")
    kind = str(kind).upper()
    if kind == "A":
        steps = _kind_a_steps(resize, rotation, image_size)
    elif kind == "B":
        steps = _kind_b_steps(resize, rotation, image_size)
    else:
        raise ValueError(f"train_transform kind must be 'A' or 'B', got {kind!r}")
    if color_jitter:
        steps.append(T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1))
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD), T.RandomErasing(scale=(low, high))]
    return T.Compose(steps)


def _kind_a_steps(resize, rotation, image_size: int) -> list:
    given = [name for name, value in (("resize", resize), ("rotation", rotation)) if value is not None]
    if given:
        raise ValueError(f"train_transform A takes no {' or '.join(given)} (they belong to kind B)")
    return [T.Resize((image_size, image_size)), T.RandomHorizontalFlip()]


def _kind_b_steps(resize, rotation, image_size: int) -> list:
    if resize is None:
        raise ValueError("train_transform B needs resize (the side before the random crop)")
    steps = [_resize_before_crop(resize, image_size, "train_transform B"), T.RandomHorizontalFlip()]
    if rotation is not None and rotation < 0:
        raise ValueError(f"rotation must be >= 0 degrees, got {rotation}")
    if rotation:
        steps.append(T.RandomRotation(rotation))
    return steps + [T.RandomCrop(image_size)]


def _resize_before_crop(resize, image_size: int, caller: str):
    """Resize((resize, resize)), checked to leave room for the `image_size` crop after it."""
    _check_side(resize, "resize")
    if resize < image_size:
        raise ValueError(f"{caller}: resize ({resize}) must be >= the crop size ({image_size})")
    return T.Resize((resize, resize))


def test_transform(resize: int | None = None, image_size: int = 224) -> T.Compose:
    """Resize((image_size, image_size)) -> ToTensor -> Normalize, or with `resize`:
    Resize((resize, resize)) + CenterCrop(image_size) -> ToTensor -> Normalize."""
    _check_side(image_size, "image_size")
    if resize is None:
        steps = [T.Resize((image_size, image_size))]
    else:
        steps = [_resize_before_crop(resize, image_size, "test_transform"), T.CenterCrop(image_size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_transform_for(augmentation: dict, image_size: int = 224) -> T.Compose:
    """The test transform that goes with a train augmentation (a `train_transform` kwargs dict):
    Resize((s, s)) + CenterCrop(image_size) where B(s) trains, else Resize((image_size, image_size))."""
    resize = augmentation.get("resize") if augmentation.get("kind", "A").upper() == "B" else None
    return test_transform(resize=resize, image_size=image_size)


def describe_transform(transform) -> str:
    """`Resize((234, 234)) → CenterCrop(224) → ToTensor → Normalize` for a torchvision Compose."""
    return " → ".join(_describe_step(step) for step in transform.transforms)


def _describe_step(step) -> str:
    side = getattr(step, "size", None)  # a (height, width) tuple: Resize's as given, the crops' made by torchvision
    if "Crop" in type(step).__name__:
        side = side[0]  # the crops here are square: their side
    return type(step).__name__ + (f"({side})" if side is not None else "")


def _check_side(value, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_IMAGE_SIDE:
        raise ValueError(f"{flag} must be a whole number of pixels in 1..{MAX_IMAGE_SIDE}, got {value!r}")
