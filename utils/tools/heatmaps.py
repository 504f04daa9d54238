"""`heatmaps`: where the cross similarity attention looks (the paper's Fig. 5 / Fig. 7).

For a group of images (DCS: anchor, positive; QCS: anchor, positive, negative, negative2) the
CSA weight vector of every image at each of the 3 feature levels (N = side×side weights summing
to 1) is reshaped to its token grid, upsampled bilinearly over the face, and shown beside the
fused map (the mean of the 3 levels).

The class grid shows, in cell (i, j), the fused weights of class-i anchors paired with class-j
partners, averaged over the sampled pairs. Every pair is weighted as a DCS pair: the cross
blocks run on the two images alone, so the anchor's weights are `softmax(agg(S))` of its
similarity matrix with the partner (for a QCS model this drops the k·agg(D) term, which needs
a negative pair). Each pair is its own batch of one, because CSA takes the min/max of its
matrices over the whole batch.
"""
import itertools
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_preprocessing import IMAGENET_MEAN, IMAGENET_STD, build_dataset
from data_preprocessing.outputs import (
    CreatedPaths,
    check_output_file,
    printable,
    refuse_existing,
)
from models.architectures import with_branches
from models.qcs import tokens_per_level

from ..device import autocast, resolve_device
from ..inference import load_trained_model
from ..settings import MAX_SEED
from . import ToolError
from .classify import detection_wanted, face_finder, faces_of, write_output

COLUMNS = ("face", "level 1", "level 2", "level 3", "fused")
CELL_INCHES = 2.2
DPI = 100
OVERLAY_ALPHA = 0.5
COLORMAP = "jet"


# ------------------------------------------------------------------------------ groups

def draw_group(labels, num_branches, anchor=None, seed=0):
    """Dataset indices of a group around `anchor` (drawn from `seed` when None), by the rules of models/METHOD.md §4.

    positive: another image of the anchor's class; negative: an image of another class (one
    that has a second image, for negative2); negative2: another image of the negative's class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if anchor is None:
        anchor = int(rng.integers(len(labels)))
    if not 0 <= anchor < len(labels):
        raise ToolError(f"--anchor {anchor} is outside the split (0..{len(labels) - 1})")
    group = [anchor, _other_of_class(labels, anchor, rng)]
    if "negative" in with_branches(num_branches).roles:
        counts = np.bincount(labels)
        candidates = np.flatnonzero((labels != labels[anchor]) & (counts[labels] >= 2))
        if not len(candidates):
            raise ToolError("no other class has two images in the split; QCS needs a negative pair")
        negative = int(rng.choice(candidates))
        group += [negative, _other_of_class(labels, negative, rng)]
    return group[:num_branches]


def _other_of_class(labels, index, rng):
    same = np.flatnonzero(labels == labels[index])
    same = same[same != index]
    if not len(same):
        raise ToolError(f"image {index} is the only one of its class in the split; no positive partner")
    return int(rng.choice(same))


# ------------------------------------------------------------------------------ maps

@torch.no_grad()
def level_maps(model, images):
    """CSA weights of a group as grids: levels × G × B × side × side (each grid sums to 1)."""
    return as_grids(model.csa_maps(*images))


def as_grids(weights):
    """CSA weight vectors (… × N) as the square token grids they weight (… × side × side)."""
    side = math.isqrt(weights.shape[-1])  # a square input gives square token grids
    return weights.unflatten(-1, (side, side))


@torch.no_grad()
def pair_weights_from_tokens(model, anchor_tokens, partner_tokens):
    """`model.csa_maps(anchor, partner)` from already computed base tokens (T×C each): L×2×1×N."""
    return model.csa_maps(base_tokens=torch.stack([anchor_tokens, partner_tokens])[:, None])  # G=2, B=1


def level_and_fused(grids):
    """The panels drawn: the levels' grids and their mean (fused), × tokens per grid (1 = uniform weight)."""
    side = grids.shape[-1]
    return torch.cat([grids, grids.mean(0, keepdim=True)]) * side * side


def upsample(grid, height, width):
    """A side×side grid (or a stack of them) resized bilinearly to height×width."""
    stacked = grid.reshape(-1, 1, *grid.shape[-2:]).float()
    out = F.interpolate(stacked, size=(height, width), mode="bilinear", align_corners=False)
    return out.reshape(*grid.shape[:-2], height, width)


def display_image(tensor):
    """A normalised input tensor (3×H×W) back to an H×W×3 array in [0, 1], as the model saw it."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


# ------------------------------------------------------------------------------ figures

def new_figure(rows, columns, heading):
    """`(figure, rows × columns axes)`, `heading` (if any) above them."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(columns * CELL_INCHES, rows * CELL_INCHES), dpi=DPI, layout="constrained")
    if heading:
        figure.suptitle(heading, fontsize=10)
    return figure, figure.subplots(rows, columns, squeeze=False)


def overlay(ax, face, heat, vmin=None, vmax=None):
    ax.imshow(face)
    return ax.imshow(heat, cmap=COLORMAP, alpha=OVERLAY_ALPHA, vmin=vmin, vmax=vmax)


def group_figure(faces, grids, titles, heading=""):
    """Rows: the images of the group; columns: face, level 1–3, fused (weights × N, per-panel scale).

    `faces`: G arrays H×W×3; `grids`: levels × G × side × side; `titles`: G row titles.
    """
    num_images = grids.shape[1]
    height, width = faces[0].shape[:2]
    panels = level_and_fused(grids)
    heat = upsample(panels, height, width).numpy()
    figure, axes = new_figure(num_images, len(COLUMNS), heading)
    for row in range(num_images):
        axes[row, 0].imshow(faces[row])
        axes[row, 0].set_title(titles[row], fontsize=9)
        for column, name in enumerate(COLUMNS[1:]):
            overlay(axes[row, column + 1], faces[row], heat[column, row])
            axes[row, column + 1].set_title(f"{name}  max {panels[column, row].max():.2f}×", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    return figure


def class_grid_figure(mean_faces, fused, classes, heading=""):
    """K×K cells: mean anchor face of row class i under the mean fused weights (× N) of its pairs
    with column-class partners, on one shared colour scale (blank where no pair was drawn)."""
    num_classes = len(classes)
    height, width = mean_faces[0].shape[:2]
    side = fused.shape[-1]
    heat = upsample(torch.nan_to_num(fused) * side * side, height, width).numpy()
    drawn = ~torch.isnan(fused).flatten(2).any(-1).numpy()
    vmin, vmax = (heat[drawn].min(), heat[drawn].max()) if drawn.any() else (0.0, 1.0)
    figure, axes = new_figure(num_classes, num_classes, heading)
    image = None
    for (i, j), ax in np.ndenumerate(axes):
        if drawn[i, j]:
            image = overlay(ax, mean_faces[i], heat[i, j], vmin, vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(f"partner: {classes[j]}", fontsize=8)
        if j == 0:
            ax.set_ylabel(f"anchor: {classes[i]}", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6, label="fused weight × N (1 = uniform)")
    return figure


# ------------------------------------------------------------------------------ class grid

def draw_class_samples(labels, num_classes, per_class, rng):
    """Up to `per_class` distinct indices of every class (a random order of the class when fewer)."""
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]


@torch.no_grad()
def base_tokens(model, dataset, indices, device, batch_size=32):
    """Base patch tokens (T×C) of the given dataset images, keyed by index."""
    indices = sorted(set(int(i) for i in indices))
    out = {}
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        images = torch.stack([dataset[i][0] for i in chunk]).to(device)
        _, tokens = model.base_features((images,))
        out.update(zip(chunk, tokens[0]))
    return out


@torch.no_grad()
def class_grid_maps(model, dataset, per_class, seed, device):
    """`(fused, counts, mean_faces)`: fused anchor grids K×K×side×side (NaN where no pair), the
    number of pairs averaged per cell (K×K) and the mean anchor face of each class."""
    rng = np.random.default_rng(seed)
    num_classes = dataset.num_classes
    anchors = draw_class_samples(dataset.labels, num_classes, per_class, rng)
    partners = draw_class_samples(dataset.labels, num_classes, per_class, rng)
    tokens = base_tokens(model, dataset, np.concatenate(anchors + partners), device)
    counts = np.zeros((num_classes, num_classes), dtype=int)
    fused = torch.full((num_classes, num_classes, tokens_per_level(model.base.input_size)), float("nan"))
    for i, j in itertools.product(range(num_classes), repeat=2):
        maps = [pair_weights_from_tokens(model, tokens[a], tokens[p])[:, 0, 0].mean(0).cpu()
                for a, p in _pairs(anchors[i], partners[j])]
        counts[i, j] = len(maps)
        if maps:
            fused[i, j] = torch.stack(maps).mean(0)
    mean_faces = [np.mean([display_image(dataset[a][0]) for a in anchors[i]], axis=0)
                  if len(anchors[i]) else np.zeros_like(display_image(dataset[0][0]))
                  for i in range(num_classes)]
    return as_grids(fused), counts, mean_faces


def _pairs(anchors, partners):
    """Anchor s with partner s; an anchor never pairs with itself (the next partner stands in)."""
    pairs = []
    for s, anchor in enumerate(anchors):
        partner = next((p for p in np.roll(partners, -s) if p != anchor), None)
        if partner is not None:
            pairs.append((int(anchor), int(partner)))
    return pairs


# ------------------------------------------------------------------------------ command

def load_group_split(args, trained):
    """The --dataset split the group (and the class grid) is drawn from, checked against the model's head."""
    classes = trained.classes if args.dataset.lower() == "folder" else None
    try:
        dataset = build_dataset(args.dataset, args.split, data_root=args.data_root,
                                transform=trained.transform(), classes=classes)
    except ValueError as error:  # DataError and the demo generator's errors
        raise ToolError(f"--dataset {args.dataset}: {error}") from None
    if dataset.num_classes != len(trained.classes):
        raise ToolError(f"--dataset {args.dataset} has {dataset.num_classes} classes but the checkpoint's "
                        f"head has {len(trained.classes)}")
    if len(dataset) < 2:
        raise ToolError(f"--dataset {args.dataset} {args.split} has {len(dataset)} image(s); need at least 2")
    return dataset


# ------------------------------------------------------------------------------ faces in photos

def check_group_source(args):
    """Before any work: the group comes from --dataset or from --images; returns whether to detect faces."""
    if not args.images:
        if args.dataset is None:
            raise ToolError("give --dataset (the group is drawn from its split) or --images FILE ...")
        if args.detect or args.min_score is not None or args.upsample is not None or args.largest:
            raise ToolError("--detect and its options apply to --images (dataset images are face crops already)")
        return False
    if args.anchor is not None:
        raise ToolError("--anchor picks from --dataset; with --images the first face is the anchor")
    if args.class_grid and args.dataset is None:
        raise ToolError("--class-grid draws from a split: give --dataset too")
    return detection_wanted(args.detect)


def faces_in_files(paths, finder, transform, flag="--images"):
    """`(input tensors, titles)` of every face of the files, each file's left to right (each file
    itself without `finder`); a file without a face, or unreadable, is a ToolError naming it after `flag`."""
    faces, titles = [], []
    for path in paths:
        if not path.exists():
            raise ToolError(f"{flag} {printable(path)}: no such file")
        _, rows, crops = faces_of(path, finder)
        if rows[0].error:
            raise ToolError(f"{flag} {printable(path)}: {rows[0].error}")
        faces += [transform(crop) for crop in crops]
        titles += [printable(path.name) + (f" face {row.face}" if row.face else "") for row in rows]
    return faces, titles


def photo_group(args, trained, detect):
    """`(input tensors, titles)` of the group given with --images: the first faces of the files, each
    file's left to right, detected and aligned as `predict` does (the file itself without detection)."""
    finder = face_finder(args, detect, trained.image_size)
    faces, titles = faces_in_files([Path(p) for p in args.images], finder, trained.transform())
    roles = with_branches(trained.model.num_branches).roles
    if len(faces) < len(roles):
        raise ToolError(f"a {trained.info.arch.upper()} group is {len(roles)} faces ({', '.join(roles)}); "
                        f"--images gave {len(faces)}: {', '.join(titles)}")
    if len(faces) > len(roles):
        print(f"warning: --images gave {len(faces)} faces; the group is the first {len(roles)}, "
              f"leaving out {', '.join(titles[len(roles):])}", file=sys.stderr)
    return faces[:len(roles)], [f"{role}: {title}" for role, title in zip(roles, titles)]


def run(args):
    """The `heatmaps` command: its outputs claimed first (new ones created exclusively, their
    folders made), the figures written before anything is printed; a failure removes what it created."""
    with CreatedPaths() as created:
        claim_heatmap_outputs(args, created)
        lines = draw(args)
        created.keep()
    for line in lines:
        print(line)
    return 0


def draw(args):
    """Compute and write the figures; returns the lines to print."""
    if not 0 <= args.seed <= MAX_SEED:
        raise ToolError(f"--seed must be 0..{MAX_SEED}, got {args.seed}")
    detect = check_group_source(args)
    trained = load_trained_model(args.checkpoint, arch="cross", size=args.size, image_size=args.image_size,
                                 data_root=args.data_root, fallback_dataset=args.dataset)
    model, device = trained.model, resolve_device(args.device)
    arch = trained.info.arch.upper()
    if args.images:
        images, titles = photo_group(args, trained, detect)
        heading = f"{arch} CSA weights of faces in {', '.join(Path(p).name for p in args.images)}"
        dataset = load_group_split(args, trained) if args.class_grid else None
    else:
        dataset = load_group_split(args, trained)
        group = draw_group(dataset.labels, model.num_branches, args.anchor, args.seed)
        images = [dataset[i][0] for i in group]
        titles = [f"{role} #{index}: {dataset.classes[dataset.labels[index]]}"
                  for role, index in zip(with_branches(model.num_branches).roles, group)]
        heading = f"{arch} CSA weights, {args.dataset} {args.split} (anchor {group[0]}, seed {args.seed})"
    with autocast(device, args.amp):
        grids = level_maps(model.to(device), [x[None].to(device) for x in images])[:, :, 0].float().cpu()
    save(group_figure([display_image(x) for x in images], grids, titles, heading), args.out, "--out")
    lines = ["group: " + ", ".join(titles),
             f"wrote {args.out} ({len(images)} rows × {len(COLUMNS)} columns: {', '.join(COLUMNS)})"]
    if args.class_grid:
        with autocast(device, args.amp):
            fused, counts, mean_faces = class_grid_maps(model, dataset, args.samples_per_class, args.seed, device)
        heading = (f"{arch} fused anchor weights by class pair (≤{args.samples_per_class} pairs per cell, "
                   f"pair weights softmax(agg(S)))")
        save(class_grid_figure(mean_faces, fused, dataset.classes, heading), args.class_grid, "--class-grid")
        lines.append(f"wrote {args.class_grid} ({dataset.num_classes}×{dataset.num_classes} cells, "
                     f"{counts.min()}–{counts.max()} pairs per cell)")
    return lines


def claim_heatmap_outputs(args, created):
    """Before any work: --out and --class-grid are two different PNG paths that can be written
    (their folders made, recorded in `created`), and new ones created exclusively unless --overwrite."""
    named = [("--out", args.out), ("--class-grid", args.class_grid)]
    if args.class_grid and Path(args.class_grid).resolve() == Path(args.out).resolve():
        raise ToolError(f"--out and --class-grid both name {args.out}; the grid would replace the group figure")
    refuse_existing(named, args.overwrite)
    for flag, path in named:
        if path and not os.path.lexists(path):
            created.claim(path, flag, create_parent=True)
        elif path:
            check_output_file(path, flag)


def save(figure, path, flag):
    """Write the figure as a PNG (its folder was made by `claim_heatmap_outputs` before any work)."""
    write_output(path, flag, lambda handle: figure.savefig(handle, format="png"), mode="wb")
