"""Why training from random weights stalls: the base branch at initialisation, for each ViT init.

    python -m utils.tools.diagnose --dataset FER2013 --data-root DIR [--size tiny --image-size 56]
                                   [--images 64] [--lr 1e-3] [--inits released xavier]

For a seeded batch of training images (test transform, no augmentation) and each `--vit-init`:

- how much of each activation's spread comes from the image: the variance across images,
  averaged over features, as a share of the variance over all entries (100% when every feature
  is a pure function of the image, 0% when every image gives the same activation);
- per parameter group: weight norm, gradient norm of the batch loss, and the norm of the first
  SAM+Adam update at `--lr`, also relative to the weights (Adam's first step moves every weight
  with a gradient by about `lr`, whatever its scale: small weights get large relative steps).

Prints its figures, judges none (models/METHOD.md §8 gives the reading).
"""
import argparse
import sys

import torch
import torch.nn.functional as F

from data_preprocessing import DATASET_NAMES, DataError, build_dataset, test_transform_for
from models import OPTION_CHOICES, build_model

from ..engine import sam_step
from ..sam import SAM
from ..settings import UsageError, check_options

# parameter name prefix → group shown; the first match wins
GROUPS = (("backbone.", "IR50 stages"), ("downsample.", "token embedding"), ("embed.", "token embedding"),
          ("vit.blocks", "ViT blocks"), ("vit.head.", "SE head + classifier"), ("vit.", "ViT class/pos, LN"))


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m utils.tools.diagnose", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dataset", default="FER2013", choices=DATASET_NAMES)
    parser.add_argument("--data-root", help="dataset folder (default: ./datas/<dataset>)")
    parser.add_argument("--size", default="tiny", choices=OPTION_CHOICES["size"])
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--images", type=int, default=64, help="images in the batch")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the first update")
    parser.add_argument("--inits", nargs="+", default=list(OPTION_CHOICES["vit_init"]),
                        choices=OPTION_CHOICES["vit_init"])
    parser.add_argument("--seed", type=int, default=0)
    return parser


def image_share(activation):
    """Variance across images (mean over features) / variance over all entries, in %.

    Population variances, so the share is at most 100%: the variance over all entries is that
    across images plus the variance of the per-feature means."""
    flat = activation.detach().flatten(1).double()
    return 100.0 * (flat.var(dim=0, correction=0).mean() / flat.var(correction=0)).item()


def activation_shares(model, images):
    """`[(where, image share %)]` through the base branch, in training mode as in the first step."""
    captured = {}
    hooks = [model.backbone.register_forward_hook(lambda m, i, out: captured.update(levels=out))]
    for index, block in enumerate(model.vit.blocks):
        hooks.append(block.register_forward_hook(
            lambda m, i, out, index=index: captured.update({f"class token after ViT block {index + 1}": out[:, 0]})))
    hooks.append(model.vit.norm.register_forward_hook(
        lambda m, i, out: captured.update({"class token into the SE head": out[:, 0]})))
    model.train()
    with torch.no_grad():
        logits, tokens = model.forward_features(images)
    for hook in hooks:
        hook.remove()
    levels = captured.pop("levels")  # the rest of `captured` is the class tokens, in order
    shares = [("input image", image_share(images)),
              *((f"IR50 level {i + 1}", image_share(level)) for i, level in enumerate(levels)),
              ("patch tokens out of the ViT", image_share(tokens)),
              *((where, image_share(value)) for where, value in captured.items()),
              ("logits", image_share(logits))]
    return shares, logits.std(dim=0).mean().item()


def group_of(name):
    return next(group for prefix, group in GROUPS if name.startswith(prefix))


def first_step_norms(model, images, labels, lr):
    """`{group: (weight norm, gradient norm, update norm)}` for one SAM+Adam step on the batch."""
    model.train()
    params = dict(model.named_parameters())
    F.cross_entropy(model(images), labels).backward()
    grads = {name: p.grad.detach().clone() for name, p in params.items()}
    model.zero_grad(set_to_none=True)
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=lr)
    sam_step(model, optimizer, (images,), labels, labels)
    sums = {}
    for name, p in params.items():
        group = sums.setdefault(group_of(name), [0.0, 0.0, 0.0])
        for i, value in enumerate((before[name], grads[name], p.detach() - before[name])):
            group[i] += value.double().pow(2).sum().item()
    return {group: tuple(v ** 0.5 for v in values) for group, values in sums.items()}


def load_batch(args):
    """`--images` training images drawn with `--seed`, with the test transform, and their labels."""
    transform = test_transform_for({"kind": "A"}, image_size=args.image_size)
    dataset = build_dataset(args.dataset, "train", data_root=args.data_root, transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    samples = [dataset[i] for i in order[:args.images].tolist()]
    return torch.stack([image for image, _ in samples]), torch.tensor([int(label) for _, label in samples]), dataset


def report(args):
    images, labels, dataset = load_batch(args)
    print(f"{len(labels)} {args.dataset} training images at {args.image_size} px, {args.size} base branch, "
          f"seed {args.seed}, first update at lr {args.lr:g}")
    for init in args.inits:
        torch.manual_seed(args.seed)
        model = build_model("base", dataset.num_classes, size=args.size, vit_init=init)
        shares, logit_spread = activation_shares(model, images)
        print(f"\n--vit-init {init}\n  share of each activation's spread that comes from the image:")
        for where, share in shares:
            print(f"    {where:32s} {share:6.1f}%")
        print(f"  logits' standard deviation across images: {logit_spread:.4f}")
        print(f"  first SAM+Adam step: {'group':22s} {'|w|':>9s} {'|grad|':>9s} {'|update|':>9s} {'update/|w|':>10s}")
        for group, (weight, grad, update) in first_step_norms(model, images, labels, args.lr).items():
            print(f"    {'':18s} {group:22s} {weight:9.3f} {grad:9.3g} {update:9.3g} {update / weight:10.2%}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images < 2:
        parser.error("--images must be at least 2")
    try:
        check_options(args)
        report(args)
    except (DataError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
