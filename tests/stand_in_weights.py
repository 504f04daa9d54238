"""Stand-in weights in the authors' released checkpoint layout, for the equivalence tests.

`tests/fixtures/official_keys_*.json` list every key of the authors' DCS and QCS 7-class state
dicts with its shape. Each stand-in tensor is a pure function of its key and shape (a generator
seeded with the CRC-32 of the key), so the logits the authors' own model gave for these weights
(`reference_DCS_7cls_raf_db.json`) can be checked here without their weights or code.
"""
import functools
import json
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HEADS = ("VIT_base.head.linear.", "VIT_cross.head.linear.")


def key_shapes(variant, num_classes=7):
    """`[(key, shape, dtype name)]` of the authors' `variant` ("DCS"/"QCS"), heads resized to
    `num_classes` rows."""
    entries = json.loads((FIXTURES / f"official_keys_{variant}_7cls_raf_db.json").read_text())["keys"]
    resized = []
    for key, shape, dtype in entries:
        if key.startswith(HEADS):
            shape = [num_classes] + list(shape[1:])
        resized.append((key, tuple(shape), dtype))
    return resized


def stand_in_tensor(key, shape, dtype):
    """The stand-in value of one tensor, determined by its key and shape alone."""
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        value = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
    elif leaf == "running_mean":
        value = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.1
    elif key.endswith("theta"):
        value = torch.tensor(0.3, dtype=torch.float64)
    elif len(shape) <= 1:  # biases, norm scales, PReLU slopes
        offset = 1.0 if leaf == "weight" else 0.0
        value = offset + torch.randn(shape, generator=generator, dtype=torch.float64) * 0.05
    else:
        fan_in = 1
        for side in shape[1:]:
            fan_in *= side
        value = torch.randn(shape, generator=generator, dtype=torch.float64) * (0.7 / fan_in ** 0.5)
    return value.float()


def authors_state_dict(variant="QCS", num_classes=7, prefix="module."):
    """The authors'-layout state dict of `variant` with stand-in weights (float32, as released)."""
    return {prefix + key: value for key, value in _stand_in(variant, num_classes).items()}


@functools.lru_cache(maxsize=4)
def _stand_in(variant, num_classes):
    return {key: stand_in_tensor(key, shape, dtype) for key, shape, dtype in key_shapes(variant, num_classes)}


def branch_inputs():
    """Four image batches (anchor, positive, negative, negative2), each 3×3×112×112, float64."""
    return [t.double() for t in torch.load(FIXTURES / "branch_inputs.pt")["inputs"]]
