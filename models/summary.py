"""Parameter counts and inference GFLOPs of a model (`python -m models --help`)."""
import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .build import ARCHS, build_model, count_parameters, inference_model
from .options import OPTION_CHOICES


def inference_gflops(model, image_size=224):
    """Forward GFLOPs (2 × multiply-adds) of the inference model on one image.

    Attention runs on the math backend here so the counter sees its matrix products.
    """
    base = inference_model(model).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        base(torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops() / 1e9


def model_summary(model):
    """Dict of base / cross / total parameter counts and inference GFLOPs."""
    base_params = count_parameters(inference_model(model))
    total = count_parameters(model)
    return dict(base_params=base_params, cross_params=total - base_params, total_params=total,
                inference_gflops=inference_gflops(model))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("--arch", default="qcs", choices=tuple(ARCHS))
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--size", default="paper", choices=OPTION_CHOICES["size"])
    parser.add_argument("--connection", default="vit", choices=OPTION_CHOICES["connection"])
    args = parser.parse_args(argv)
    summary = model_summary(build_model(args.arch, args.num_classes, size=args.size, connection=args.connection))
    print(f"{args.arch.upper()} ({args.size} size, {args.num_classes} classes)\n"
          f"  parameters, base branch (inference): {summary['base_params'] / 1e6:8.2f} M\n"
          f"  parameters, cross modules:           {summary['cross_params'] / 1e6:8.2f} M\n"
          f"  parameters, total (training):        {summary['total_params'] / 1e6:8.2f} M\n"
          f"  inference GFLOPs per image:          {summary['inference_gflops']:8.2f}")
    if args.size == "paper":
        print("  The released checkpoints count 55.2 M / 82.9 M: they also hold modules that are\n"
              "  never run (IR50 face-embedding head and unused ViT layers: 14.5 M in the base branch,\n"
              "  1.6 M in the cross ViT), which this project does not build. The paper reports 16.2 GFLOPs.")

