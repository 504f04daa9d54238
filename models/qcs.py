"""The base branch and the DCS / QCS cross models (METHOD.md §1–3).

Forward path of `CrossModel(*group)`, G = 2 images for DCS, 4 for QCS (`model(x)` is steps 2–4 on one image):

1. input group: `CrossModel.base_features` concatenates the G images on the batch and makes one
   `BaseBranch.forward_features` call (resize to `input_size`, nearest);
2. IR50 levels: `IR50Stages` (ir50.py) gives NUM_FEATURE_LEVELS = 3 feature maps, its
   `BranchBatchNorm2d` layers normalising each branch on its own;
3. embeddings: per level `BaseBranch.downsample` then `BaseBranch.embed`, N tokens each, concatenated;
4. base ViT: `BaseBranch.vit` (`TokenViT`, vit.py) → base logits and the patch tokens;
5. cross blocks (CSA): `CrossModel.refine` splits the tokens by level (`split_levels`) and runs each
   level's `CrossBlock` (csa.py: weights from `csa_weights`, the paper's Eqs. 1–9);
6. cross head: `CrossModel.cross_logits` feeds `base + cross` tokens to `cross_head` (a depth-1
   `TokenViT`, or `GAPHead` / `BilinearHead`) → cross logits;
7. outputs: `CrossModel._group_outputs`: the G base logits, then the G cross logits (for the loss
   of Eq. 10, losses.py).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .csa import CrossBlock
from .ir50 import IR50Stages
from .vit import TokenViT

NUM_FEATURE_LEVELS = 3


def tokens_per_level(input_size):
    """Each level ends on a grid of ceil(input_size / 16)² tokens (7×7 = 49 at 112)."""
    side = -(-input_size // 16)
    return side * side


class BaseBranch(nn.Module):
    """IR50 stages → per-level downsample and token embedding → base ViT → logits.

    The only network kept at inference. `forward(x)` returns logits.
    """

    def __init__(self, num_classes, channels, units, dim, num_heads, input_size, depth=2, mlp_ratio=4.0,
                 drop=0.0, proj_drop=0.0, checkpoint_backbone=False, vit_init="released"):
        super().__init__()
        self.input_size = input_size
        self.backbone = IR50Stages(channels, units, checkpoint_backbone)
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, 2, 1) for c in channels)
        self.embed = nn.ModuleList([
            nn.Sequential(nn.Conv2d(channels[0], dim, 3, 2, 1), nn.Conv2d(dim, dim, 3, 2, 1)),
            nn.Sequential(nn.Conv2d(channels[1], dim, 3, 2, 1)),
            nn.Sequential(nn.Conv2d(channels[2], dim, 1)),
        ])
        self.num_tokens = NUM_FEATURE_LEVELS * tokens_per_level(input_size)
        self.vit = TokenViT(self.num_tokens, num_classes, dim, depth, num_heads, mlp_ratio, drop, proj_drop,
                            vit_init)

    def forward(self, x):
        return self.forward_features(x)[0]

    def forward_features(self, x, num_branches=1):
        """`(logits, patch_tokens)`; `x` may hold `num_branches` branches concatenated on the batch."""
        x = F.interpolate(x, size=self.input_size)  # nearest, as released
        with self.backbone.branch_groups(num_branches):
            levels = self.backbone(x)
        tokens = [embed(down(f)).flatten(2).transpose(1, 2)
                  for f, down, embed in zip(levels, self.downsample, self.embed)]
        return self.vit(torch.cat(tokens, dim=1))


class GAPHead(nn.Module):
    """Connection ablation: average-pool the tokens, then a linear classifier."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        return self.classifier(tokens.mean(dim=1))


class BilinearHead(nn.Module):
    """Connection ablation, as released: bilinear pooling of `base + cross` with the cross tokens, then linear."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.classifier = nn.Linear(dim * dim, num_classes)

    def forward(self, base_tokens, cross_tokens):
        return self.classifier(self.pool(base_tokens, cross_tokens))

    @staticmethod
    def pool(base_tokens, cross_tokens):
        """B×C² features: `100 · L2-normalise(sign(X) · sqrt(|X| + 1e-5))`, `X = (base + cross)ᵀ cross / N`."""
        residual = base_tokens + cross_tokens  # the release's commented-out call pools after the residual
        pooled = torch.einsum("bnc,bnd->bcd", residual, cross_tokens) / residual.shape[1]
        pooled = pooled.flatten(1)
        pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + 1e-5)
        return 100 * F.normalize(pooled, dim=1)


class CrossModel(nn.Module):
    """DCS (2 branches) or QCS (4 branches): the base branch plus the cross module.

    `model(x)` returns base logits. `model(*group)` with the group's G images returns the
    base logits of each image, then the cross logits of each (METHOD.md §3 order), from one
    batched base-network call; `model.forward_per_branch(*group)` gives them with one call per image.
    """

    def __init__(self, base, num_branches, num_classes, dim, num_heads, mlp_ratio=4.0,
                 attention="csa", matrix="sd", connection="vit", cross_block="inplace",
                 cross_drop=0.0, cross_proj_drop=0.0, vit_init="released"):
        super().__init__()
        self.base = base
        self.num_branches = num_branches
        self.cross_blocks = nn.ModuleList(
            CrossBlock(dim, num_branches, mlp_ratio, attention, matrix, cross_block)
            for _ in range(NUM_FEATURE_LEVELS))
        self.connection = connection
        if connection == "vit":
            self.cross_head = TokenViT(base.num_tokens, num_classes, dim, 1, num_heads,
                                       mlp_ratio, cross_drop, cross_proj_drop, vit_init)
        elif connection == "gap":
            self.cross_head = GAPHead(dim, num_classes)
        else:
            self.cross_head = BilinearHead(dim, num_classes)

    def forward(self, *images):
        if len(images) == 1:
            return self.base(images[0])
        return self._group_outputs(images)

    def forward_per_branch(self, *images):
        """`model(*group)` with one base-network call per image instead of one batched call.

        Slower and otherwise the same (batch norm normalises each branch on its own either way):
        the reference that the batched call is tested and benchmarked against.
        """
        return self._group_outputs(images, batched=False)

    def _group_outputs(self, images, batched=True):
        """The G base logits, then the G cross logits (METHOD.md §3 order)."""
        if len(images) != self.num_branches:
            raise ValueError(f"this model takes 1 or {self.num_branches} images, got {len(images)}")
        base_logits, base_tokens = self.base_features(images, batched)
        cross_logits = self.cross_logits(base_tokens, self.refine(base_tokens))
        return tuple(base_logits.unbind(0)) + tuple(cross_logits.unbind(0))

    def base_features(self, images, batched=True):
        """Base logits G×B×K and patch tokens G×B×T×C of the G images.

        `batched`: one base-network call on the concatenated images (each branch's batch norm
        statistics kept apart); otherwise one call per image.
        """
        if not batched:
            logits, tokens = zip(*(self.base.forward_features(x) for x in images))
            return torch.stack(logits), torch.stack(tokens)
        logits, tokens = self.base.forward_features(torch.cat(images), len(images))
        return logits.unflatten(0, (len(images), -1)), tokens.unflatten(0, (len(images), -1))

    def refine(self, base_tokens):
        """Cross-block tokens `c_X` of every branch X, all levels: G×B×T×C.

        Level l of every branch goes through `cross_blocks[l]`, whose CSA weights `w_X` follow
        `csa_weights` (Eqs. 3–6 for DCS, Eq. 9 for QCS: `w_1 = softmax(agg(S₁₂) + k·agg(D₁₃))`, …).
        """
        return torch.cat([block(level) for block, level in zip(self.cross_blocks, split_levels(base_tokens))], dim=2)

    def cross_logits(self, base_tokens, cross_tokens):
        """Cross logits G×B×K from the contrastive residual connection.

        Branch X: `cross_head(t_X)` with `t_X = base tokens of X + c_X` (ViT or GAP connection), or
        `cross_head(base tokens of X, c_X)`, which pools `t_X` with `c_X` (bilinear pooling).
        """
        if self.connection == "bp":
            return torch.stack([self.cross_head(b, c) for b, c in zip(base_tokens.unbind(0), cross_tokens.unbind(0))])
        residual = base_tokens + cross_tokens
        logits = self.cross_head(residual.flatten(0, 1))
        logits = logits[0] if self.connection == "vit" else logits  # a TokenViT also returns its tokens
        return logits.unflatten(0, residual.shape[:2])

    def csa_maps(self, *images, base_tokens=None):
        """Per-level CSA weight vectors (levels × G × B × N) of a group, for visualisation.

        Give the G images, or instead their `base_tokens` (G×B×T×C, as from `base_features`)
        when they are already computed. G may be 2 for a QCS model too: the pair is then
        weighted as a DCS pair (S term only).
        """
        if base_tokens is None:
            _, base_tokens = self.base_features(images)
        elif images:
            raise ValueError("give the images or their base_tokens, not both")
        return torch.stack([block.spatial_weights(level)
                            for block, level in zip(self.cross_blocks, split_levels(base_tokens))])


def split_levels(tokens):
    """The NUM_FEATURE_LEVELS token sets (…×N×C each) of the base branch's …×T×C patch tokens."""
    return tokens.chunk(NUM_FEATURE_LEVELS, dim=-2)
