"""The released train augmentation split in two (`--device-augment`): the geometric steps on the
data workers, the photometric steps batched on the training device.

- workers: decode, Resize, RandomHorizontalFlip (B: RandomRotation, RandomCrop) on the PIL image,
  then `PILToTensor`: a uint8 tensor [3, image_size, image_size];
- device, on a uint8 batch [N, 3, H, W]: ColorJitter (per image: its own four factors and its own
  order of the four), ToTensor's /255, Normalize, RandomErasing (per image: its own box).

The photometric steps reproduce torchvision's PIL code path bit for bit for given parameters: each
jitter is PIL's `Image.blend` on uint8 values (truncated, clipped), hue goes through PIL's uint8 HSV
conversion with the same float/double arithmetic. The parameters are drawn as torchvision draws them,
from a `torch.Generator` the caller passes (see `DeviceAugment` for the per-step seeding).
"""
import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torchvision import transforms as T

from .transforms import IMAGENET_MEAN, IMAGENET_STD

PHOTOMETRIC_STEPS = (T.ColorJitter, T.ToTensor, T.Normalize, T.RandomErasing)
JITTERS = ("brightness", "contrast", "saturation", "hue")  # torchvision's fn_idx numbering
ERASE_ATTEMPTS = 10  # torchvision's RandomErasing tries this many boxes before giving up
# PIL's RGB -> L weights in 16-bit fixed point (ITU-R 601-2), rounded with +0x8000 before >> 16.
LUMA_WEIGHTS = (19595.0, 38470.0, 7471.0)
# Which of (v, q, p, t) becomes R, G, B in each of PIL's six hue sectors.
SECTOR_CHANNELS = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))

__all__ = ["Photometric", "DeviceAugment", "split_train_transform", "step_seed"]


@dataclass(frozen=True)
class Photometric:
    """ColorJitter, ToTensor, Normalize and RandomErasing, batched over uint8 images on any device.

    Jitter ranges are factor intervals as torchvision stores them (`None`: that jitter is off);
    all four `None`: no ColorJitter step at all.
    """
    brightness: tuple | None = (0.8, 1.2)
    contrast: tuple | None = (0.8, 1.2)
    saturation: tuple | None = (0.8, 1.2)
    hue: tuple | None = (-0.1, 0.1)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    erase_p: float = 0.5
    erase_scale: tuple = (0.02, 0.1)
    erase_ratio: tuple = (0.3, 3.3)
    erase_value: float = 0.0

    @classmethod
    def from_steps(cls, steps):
        """The photometric steps of a released train Compose (ColorJitter optional), with their settings."""
        jitter = next((s for s in steps if isinstance(s, T.ColorJitter)), None)
        normalize = next(s for s in steps if isinstance(s, T.Normalize))
        erasing = next(s for s in steps if isinstance(s, T.RandomErasing))
        if not isinstance(erasing.value, (int, float)):
            raise ValueError(f"device augmentation erases with one number, got value={erasing.value!r}")
        ranges = {name: getattr(jitter, name) if jitter is not None else None for name in JITTERS}
        return cls(**ranges, mean=tuple(normalize.mean), std=tuple(normalize.std), erase_p=erasing.p,
                   erase_scale=tuple(erasing.scale), erase_ratio=tuple(erasing.ratio),
                   erase_value=float(erasing.value))

    @property
    def jitters(self):
        """Indices (in `JITTERS`) of the jitters that are on."""
        return [i for i, name in enumerate(JITTERS) if getattr(self, name) is not None]

    def draw(self, count, height, width, generator=None):
        """Per-image parameters on the CPU: `order` [N, 4] (a permutation each, as `torch.randperm(4)`),
        `factors` [N, 4] (float32, in `JITTERS` order) and `boxes` [N, 4] (top, left, h, w; h = w = 0:
        not erased)."""
        order = torch.rand(count, len(JITTERS), dtype=torch.float64, generator=generator).argsort(dim=1)
        factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(count, 1)  # no change, where a jitter is off
        for index in self.jitters:
            factors[:, index] = torch.empty(count).uniform_(*getattr(self, JITTERS[index]), generator=generator)
        return dict(order=order, factors=factors, boxes=self.draw_boxes(count, height, width, generator))

    def draw_boxes(self, count, height, width, generator=None):
        """RandomErasing's boxes: with probability p, the first of 10 drawn (area, log-aspect) pairs
        that fits, at a uniform position; h = w = 0 where the image is not erased."""
        erased = torch.rand(count, generator=generator) < self.erase_p
        fraction = torch.empty(count, ERASE_ATTEMPTS).uniform_(*self.erase_scale, generator=generator)
        log_low, log_high = torch.log(torch.tensor(self.erase_ratio)).tolist()  # in float32, as torchvision
        aspect = torch.empty(count, ERASE_ATTEMPTS).uniform_(log_low, log_high, generator=generator).exp()
        area = height * width * fraction.double()
        h = (area * aspect.double()).sqrt().round()  # Python's round: half to even, like torch.round
        w = (area / aspect.double()).sqrt().round()
        fits = (h < height) & (w < width)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        keep = erased & fits.any(dim=1)
        h, w = torch.where(keep, h, 0.0), torch.where(keep, w, 0.0)
        position = torch.rand(count, 2, dtype=torch.float64, generator=generator)
        top = (position[:, 0] * (height - h + 1)).floor()
        left = (position[:, 1] * (width - w + 1)).floor()
        return torch.stack([top, left, h, w], dim=1).long()

    def apply(self, images, params):
        """uint8 [N, 3, H, W] (any device) and `draw`'s parameters -> normalised float32 [N, 3, H, W]."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"device augmentation takes uint8 RGB batches [N, 3, H, W], got {images.dtype} "
                             f"{list(images.shape)}")
        x = images.float()
        if self.jitters:
            x = jitter_in_order(x, params["order"], params["factors"], self.jitters)
        x = x.div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return erase(x.sub_(mean).div_(std), params["boxes"], self.erase_value)

    def __call__(self, images, generator=None):
        """Draw each image's parameters from `generator` and apply them."""
        return self.apply(images, self.draw(len(images), *images.shape[-2:], generator=generator))


def jitter_in_order(x, order, factors, active):
    """Apply jitter `order[n, k]` at position k to image n, for k = 0..3 (the inactive ones skipped).

    The images doing the same jitter at the same position are gathered, jittered together and put back.
    """
    plan = [(op, (order[:, slot] == op).nonzero().flatten()) for slot in range(order.shape[1]) for op in active]
    plan = [(op, indices) for op, indices in plan if len(indices)]
    if not plan:
        return x
    # one transfer for all index lists (they are built on the CPU, where the parameters are drawn)
    all_indices = torch.cat([indices for _, indices in plan]).to(x.device).split([len(i) for _, i in plan])
    factors = factors.to(x.device)
    for (op, _), indices in zip(plan, all_indices):
        chosen = factors.index_select(0, indices)[:, op].view(-1, 1, 1, 1)
        x.index_copy_(0, indices, JITTER_FUNCTIONS[op](x.index_select(0, indices), chosen))
    return x


def blend(degenerate, image, factor):
    """PIL's `Image.blend(degenerate, image, factor)` on uint8 values held in float32: in float32,
    degenerate + factor·(image − degenerate), truncated towards zero and clipped to 0..255."""
    return (image - degenerate).mul_(factor).add_(degenerate).trunc_().clamp_(0, 255)


def luma(x):
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, [N, 1, H, W]. Exact in float32:
    every partial sum is an integer below 2**24."""
    r, g, b = (x[:, c:c + 1] * weight for c, weight in enumerate(LUMA_WEIGHTS))
    return (r + g + b + 32768.0).div_(65536.0).floor_()


def adjust_brightness(x, factor):
    """PIL's ImageEnhance.Brightness: a blend with black."""
    return blend(0.0, x, factor)


def adjust_contrast(x, factor):
    """PIL's ImageEnhance.Contrast: a blend with the grey of the image's mean luma, rounded to an integer."""
    gray = luma(x)
    mean = gray.sum(dim=(1, 2, 3), dtype=torch.float64) / gray[0].numel()
    return blend((mean + 0.5).floor().float().view(-1, 1, 1, 1), x, factor)


def adjust_saturation(x, factor):
    """PIL's ImageEnhance.Color: a blend with the image's luma."""
    return blend(luma(x), x, factor)


def adjust_hue(x, factor):
    """torchvision's PIL hue: RGB -> PIL's uint8 HSV, H += int(factor·255) modulo 256, HSV -> RGB.

    The per-pixel arithmetic of `reference_adjust_hue` read from small tables: H by (which channel is
    largest, which smallest, distance of the middle one from the largest, max − min), S by
    (max − min, max), p of PIL's hsv2rgb by (S, V) and its q-or-t multiplier by (H, S).
    """
    tables = hue_tables(x.device)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    spread = maxc - minc
    middle = maxc - (r + g + b - maxc - minc)
    r_max = r == maxc
    g_max = (g == maxc) & ~r_max
    b_max = ~(r_max | g_max)
    case = (g_max + 2.0 * b_max) * 2 + torch.where(b_max, r != minc, b != minc)
    h = lookup(tables.hue, (case * 256 + middle) * 256 + spread)
    s = lookup(tables.saturation, spread * 256 + maxc)
    h = torch.remainder(h + hue_shift(factor), 256)
    p = lookup(tables.p, s * 256 + maxc)
    m = round_half_away(maxc.double() * lookup(tables.m_factor, h * 256 + s)).float()
    v_channel, p_channel = lookup(tables.v_channel, h), lookup(tables.p_channel, h)
    out = torch.empty_like(x)
    return out.scatter_(1, v_channel, maxc).scatter_(1, p_channel, p).scatter_(1, 3 - v_channel - p_channel, m)


def lookup(table, keys):
    """`table[keys]` for integer-valued float keys (index_select: the fastest gather on the CPU)."""
    return table.index_select(0, keys.long().flatten()).view(keys.shape)


def hue_shift(factor):
    """np.int32(hue_factor * 255), as torchvision adds it to PIL's uint8 H (float32 [N, 1, 1, 1])."""
    return (factor.double() * 255).trunc().float()


def reference_adjust_hue(x, factor):
    """`adjust_hue` computed pixel by pixel as PIL does (slower; the tables are built from it)."""
    h, s, v = rgb_to_pil_hsv(x)
    return pil_hsv_to_rgb(torch.remainder(h + hue_shift(factor).double(), 256), s, v)


def rgb_to_pil_hsv(x):
    """PIL's `rgb2hsv_row` on [N, 3, H, W] float32 holding uint8 values: (h, s, v), each [N, 1, H, W]
    of integers in float64. Float where PIL computes in float, double where it computes in double."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    gray = maxc == minc
    spread = torch.where(gray, 1.0, maxc - minc)
    s = spread / torch.where(maxc == 0, 1.0, maxc)
    rc, gc, bc = ((maxc - c) / spread for c in (r, g, b))
    h = torch.where(r == maxc, bc - gc,
                    torch.where(g == maxc, (2.0 + rc.double() - bc.double()).float(),
                                (4.0 + gc.double() - rc.double()).float()))
    h = torch.fmod(h.double() / 6.0 + 1.0, 1.0).float()
    uh = (h.double() * 255.0).trunc().clamp(0, 255)
    us = (s.double() * 255.0).trunc().clamp(0, 255)
    return torch.where(gray, 0.0, uh), torch.where(gray, 0.0, us), maxc.double()


def hsv_factors(h, s):
    """PIL's `hsv2rgb` before the multiplication by v: (sector 0..5, the multipliers of p, q and t)."""
    sector = (h * 6.0 / 255.0).floor()
    f = (h * 6.0 / 255.0 - sector).float()
    fs = (s / 255.0).float()
    return (torch.remainder(sector, 6), 1.0 - fs.double(), 1.0 - (fs * f).double(),
            1.0 - fs.double() * (1.0 - f.double()))


def pil_hsv_to_rgb(h, s, v):
    """PIL's `hsv2rgb`: integer-valued float64 (h, s, v) [N, 1, H, W] -> float32 RGB [N, 3, H, W]."""
    sector, p_factor, q_factor, t_factor = hsv_factors(h, s)
    p, q, t = (round_half_away(v * factor).clamp(0, 255) for factor in (p_factor, q_factor, t_factor))
    candidates = torch.cat([v, q, p, t], dim=1)  # [N, 4, H, W]
    table = torch.tensor(SECTOR_CHANNELS, device=h.device)
    channels = table[sector.long().squeeze(1)].permute(0, 3, 1, 2)  # [N, 3, H, W]
    return torch.where(s == 0, v, candidates.gather(1, channels)).float()


def round_half_away(x):
    """C's `round` for x >= 0: halves away from zero (torch.round rounds them to even)."""
    whole = x.trunc()
    return whole + (x - whole >= 0.5)


@functools.cache
def hue_tables(device):
    """`adjust_hue`'s tables on `device`, computed with the reference arithmetic."""
    rows, cols = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    # the row clipped to the column: the middle channel lies within the spread, the spread within the max
    lower = torch.minimum(rows, cols)
    hue = rgb_to_pil_hsv(representative_rgb(lower, cols).view(1, 3, 6 * 256, 256))[0]  # by (middle, spread)
    saturation = rgb_to_pil_hsv(torch.stack([cols, cols - lower, cols - lower]).unsqueeze(0))[1]  # by (spread, max)
    sector, p_factor, q_factor, t_factor = hsv_factors(rows.double().reshape(1, 1, -1), cols.double().reshape(1, 1, -1))
    odd = torch.remainder(sector, 2) == 1  # odd sectors use q, even ones t
    sector = sector.flatten()[::256].long()
    values = torch.arange(256.0, dtype=torch.float64)
    p = round_half_away(p_factor.flatten()[:256, None] * values).float()  # by (s, v)
    tables = dict(hue=hue.flatten().float(), saturation=saturation.flatten().float(), p=p.flatten(),
                  m_factor=torch.where(odd, q_factor, t_factor).flatten(),
                  # the channels taking v (candidate 0) and p (candidate 2) in each sector
                  v_channel=torch.tensor([channels.index(0) for channels in SECTOR_CHANNELS])[sector],
                  p_channel=torch.tensor([channels.index(2) for channels in SECTOR_CHANNELS])[sector])
    return SimpleNamespace(**{name: table.to(device) for name, table in tables.items()})


def representative_rgb(middle, spread):
    """[3, 6, ...]: an RGB triple (max 255) of each `adjust_hue` case: 0/1 red largest with blue/green
    smallest, 2/3 green largest with blue/red smallest, 4/5 blue largest with red/green smallest."""
    top, mid, low = torch.full_like(spread, 255.0), 255.0 - middle, 255.0 - spread
    cases = ((top, mid, low), (top, low, mid), (mid, top, low), (low, top, mid), (low, mid, top), (mid, low, top))
    return torch.stack([torch.stack(rgb) for rgb in cases], dim=1)


JITTER_FUNCTIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def erase(x, boxes, value):
    """Set each image's box (top, left, h, w) to `value` in every channel; h = w = 0 erases nothing."""
    top, left, h, w = boxes.to(x.device).unbind(1)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], value)


def split_train_transform(released):
    """A released train Compose -> (the worker's Compose: its geometric steps then `PILToTensor`, the
    `Photometric` of its photometric steps)."""
    steps = list(released.transforms)
    first = next(i for i, step in enumerate(steps) if isinstance(step, PHOTOMETRIC_STEPS))
    if not all(isinstance(step, PHOTOMETRIC_STEPS) for step in steps[first:]):
        raise ValueError("device augmentation needs every geometric step before the photometric ones")
    return T.Compose(steps[:first] + [T.PILToTensor()]), Photometric.from_steps(steps[first:])


def step_seed(seed, rank, epoch, step):
    """A 64-bit seed that depends only on (run seed, rank, epoch, step)."""
    high, low = np.random.SeedSequence([seed, rank, epoch, step]).generate_state(2, dtype=np.uint32)
    return (int(high) << 32) | int(low)


@dataclass(frozen=True)
class DeviceAugment:
    """The photometric half of a run's train augmentation, applied to each branch's uint8 batch
    after the transfer. Step `step` of epoch `epoch` draws from a generator seeded by
    `step_seed(seed, rank, epoch, step)`, so a resumed run draws what the uninterrupted one drew."""

    photometric: Photometric
    seed: int
    rank: int = 0

    def __call__(self, images, epoch, step):
        """A list of uint8 batches (the branches, in order) -> the list of normalised float batches."""
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, epoch, step))
        return [self.photometric(x, generator) for x in images]
