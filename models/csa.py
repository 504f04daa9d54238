"""Cross Similarity Attention (SPEC §2): similarity matrices, spatial weights, cross blocks."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .vit import Mlp

# Partner layout of a group. DCS: (anchor, positive). QCS: the closed loop
# 1–2 (S), 2–4 (D), 4–3 (S), 3–1 (D) over (anchor, positive, negative, negative2).
SAME_CLASS_PAIRS = {2: ((0, 1),), 4: ((0, 1), (2, 3))}
DIFF_CLASS_PAIRS = {2: (), 4: ((0, 2), (1, 3))}


def distance_matrix(q_y, q_x):
    """`cdist(q_Y, q_X)` shifted so its minimum over the whole B×N×N tensor is 0."""
    d = torch.cdist(q_y, q_x)
    return d - d.min()


def similarity_matrix(q_y, q_x):
    """`max(D) − D` of the shifted distance matrix (whole-tensor max, as released)."""
    d = distance_matrix(q_y, q_x)
    return d.max() - d


def aggregate_columns(m):
    """`agg(M)[b, j] = Σ_i M[b,i,j] / ‖M[b,i,:]‖₂`: weight of the image on M's column side."""
    return F.normalize(m, dim=2).sum(dim=1)


def aggregate_rows(m):
    """`agg(Mᵀ)`: weight of the image on M's row side, without materialising the transpose."""
    return F.normalize(m, dim=1).sum(dim=2)


def dot_product_matrix(q_y, q_x):
    """SDPA ablation: softmax over X of `q_Y q_Xᵀ / √C`."""
    return torch.softmax(q_y @ q_x.transpose(1, 2) / math.sqrt(q_y.shape[-1]), dim=-1)


def group_terms(num_branches, k, matrix="sd"):
    """The pairs `(i, j, same_class, scale)` whose matrices feed the weights of a group."""
    same = [(i, j, True, 1.0) for i, j in SAME_CLASS_PAIRS[num_branches]]
    diff = [(i, j, False, k) for i, j in DIFF_CLASS_PAIRS[num_branches]]
    if num_branches == 2 or matrix == "sd":
        return same + diff
    return same if matrix == "s" else diff


def csa_weights(queries, k, matrix="sd"):
    """Spatial weight vectors (each B×N, summing to 1) for the G = 2 or 4 images of a group.

    `queries` holds the G query tensors (B×N×C). Each distance matrix is computed once and
    serves both of its images. `matrix` selects the QCS terms: "sd" (both), "s", "d".
    """
    logits = [0.0] * len(queries)
    for i, j, same_class, scale in group_terms(len(queries), k, matrix):
        m = (similarity_matrix if same_class else distance_matrix)(queries[i], queries[j])
        logits[i] = logits[i] + scale * aggregate_rows(m)
        logits[j] = logits[j] + scale * aggregate_columns(m)
    return [torch.softmax(z, dim=-1) for z in logits]


def sdpa_weights(queries, k, matrix="sd"):
    """SDPA ablation of `csa_weights`: X is weighted by the attention the partner pays to it.

    Each image's weight is the mean over the partner's queries of the row-softmax scores;
    in QCS the same-class and different-class partners are mixed as `(w_S + k·w_D) / (1 + k)`.
    """
    weights, totals = [0.0] * len(queries), [0.0] * len(queries)
    for i, j, _, scale in group_terms(len(queries), k, matrix):
        for y, x in ((i, j), (j, i)):
            weights[x] = weights[x] + scale * dot_product_matrix(queries[y], queries[x]).mean(dim=1)
            totals[x] = totals[x] + scale
    return [w / total for w, total in zip(weights, totals)]


class CrossBlock(nn.Module):
    """One per-level cross block, shared by all branches of a group.

    For each image: `x = LN1(x)`, `[q, v] = proj(x)`, `x = x + w·v`, `x = LN2(x)`,
    `x = x + MLP(x)`, where `w` comes from the partner images (CSA or the SDPA ablation).
    """

    def __init__(self, dim, mlp_ratio=4.0, attention="csa", matrix="sd", learn_theta=True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim * 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.theta = nn.Parameter(torch.zeros(())) if learn_theta else None
        self.weight_fn = {"csa": csa_weights, "sdpa": sdpa_weights}[attention]
        self.matrix = matrix

    def forward(self, tokens):
        """`tokens`: G×B×N×C, the G images of each group. Returns the refined G×B×N×C tokens."""
        x = self.norm1(tokens)
        q, v = self.proj(x).chunk(2, dim=-1)
        x = self.norm2(x + self._weights(q).unsqueeze(-1) * v)
        return x + self.mlp(x)

    def spatial_weights(self, tokens):
        """The weight vectors `w` (G×B×N) this block uses for `tokens`; for visualisation."""
        return self._weights(self.proj(self.norm1(tokens)).chunk(2, dim=-1)[0])

    def _weights(self, q):
        k = 1.0 + torch.tanh(self.theta) if self.theta is not None else 1.0
        return torch.stack(self.weight_fn(q.unbind(0), k, self.matrix))
