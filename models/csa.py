"""Cross Similarity Attention (METHOD.md §2): similarity matrices, spatial weights, cross blocks.

Equation numbers are the paper's: Eqs. 1–2 the matrices, 3–6 a pair's weights, 7–9 the QCS fusion
of a same-class S with a different-class D. Released behaviour wins where the two differ (METHOD.md).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import with_branches
from .vit import Mlp


def distance_matrix(q_y, q_x):
    """`D = cdist(q_Y, q_X) − min(D)`: the Euclidean distance matrix of Eqs. 1–2, rows Y, columns X.

    The minimum is over the whole B×N×N tensor (as released). A different-class pair uses D
    directly (Eq. 7: not turned into a similarity, its values coarsely aligned with S's).
    """
    d = torch.cdist(q_y, q_x)
    return d - d.min()


def similarity_matrix(q_y, q_x):
    """`S = max(D) − D` of the shifted distance matrix (Eqs. 1–2; whole-tensor max, as released)."""
    d = distance_matrix(q_y, q_x)
    return d.max() - d


def aggregate_columns(m):
    """`agg(M)[b, j] = Σ_i M[b,i,j] / ‖M[b,i,:]‖₂`: logits of the image on M's column (key) side.

    Eq. 3 (Eq. 8 for QCS's S and D, either side): L2-normalise each row, then sum over the rows.
    """
    return F.normalize(m, dim=2).sum(dim=1)


def aggregate_rows(m):
    """`agg(Mᵀ)`: logits of the image on M's row side (Eq. 5, the mirror of Eq. 3), without the transpose."""
    return F.normalize(m, dim=1).sum(dim=2)


def group_terms(num_branches, k, matrix="sd"):
    """The pairs `(i, j, same_class, scale)` whose matrices feed the weights of a group.

    DCS: S₁₂. QCS, the closed loop 1–2 (S), 2–4 (D), 4–3 (S), 3–1 (D): S₁₂, S₃₄ with scale 1 and
    D₁₃, D₂₄ with scale k (the `S + k·D` of Eq. 9); its "S only" / "D only" ablations have no k.
    """
    layout = with_branches(num_branches)  # the partner layout: models/architectures.py
    same = [(i, j, True, 1.0) for i, j in layout.same_class_pairs]
    diff = [(i, j, False, k if matrix == "sd" else 1.0) for i, j in layout.diff_class_pairs]
    # DCS has no different-class pair: its S term serves every `matrix`
    return {"sd": same + diff, "s": same, "d": diff or same}[matrix]


def csa_weights(queries, k, matrix="sd"):
    """Spatial weight vectors (each B×N, summing to 1) for the G = 2 or 4 images of a group.

    `queries` holds the G query tensors (B×N×C). Each distance matrix is computed once and
    serves both of its images. With `agg` taken on each image's side (Eqs. 3, 5):

    - DCS (Eqs. 4, 6): `w_1 = softmax(agg(S₁₂))`, `w_2 = softmax(agg(S₁₂))`.
    - QCS (Eq. 9's fused logits in place of Eq. 4's):
      `w_1 = softmax(agg(S₁₂) + k·agg(D₁₃))`, `w_2 = softmax(agg(S₁₂) + k·agg(D₂₄))`,
      `w_3 = softmax(agg(S₃₄) + k·agg(D₁₃))`, `w_4 = softmax(agg(S₃₄) + k·agg(D₂₄))`.

    `matrix` selects the QCS terms: "sd" (both), "s" or "d" (that term alone, no k).
    """
    logits = [0.0] * len(queries)
    for i, j, same_class, scale in group_terms(len(queries), k, matrix):
        m = (similarity_matrix if same_class else distance_matrix)(queries[i], queries[j])
        logits[i] = logits[i] + scale * aggregate_rows(m)
        logits[j] = logits[j] + scale * aggregate_columns(m)
    return [torch.softmax(z, dim=-1) for z in logits]


def sdpa_updates(queries, values, k, matrix="sd"):
    """The scaled dot-product ablation: plain cross-attention between the images of a group.

    Each position of image X takes the `softmax(q_X · q_Y / √C)`-weighted sum of its partner Y's
    values, the update that replaces `w_X · v`. DCS (as released): the one partner. QCS (an
    extension; the release has none): the same-class partner's update plus k times the
    different-class partner's, over the same pairs as CSA.
    """
    updates = [0.0] * len(queries)
    for i, j, _, scale in group_terms(len(queries), k, matrix):
        updates[i] = updates[i] + scale * F.scaled_dot_product_attention(queries[i], queries[j], values[j])
        updates[j] = updates[j] + scale * F.scaled_dot_product_attention(queries[j], queries[i], values[i])
    return updates


class CrossBlock(nn.Module):
    """One per-level cross block, shared by all branches of a group.

    `form="inplace"` (7-class DCS and all QCS releases): `x = LN1(x)`, `[q, v] = proj(x)`,
    `x = LN2(x + u)`, `x = x + MLP(x)`. `form="prenorm"` (8-class DCS releases):
    `[q, v] = proj(LN1(x))`, `x = x + u`, `x = x + MLP(LN2(x))`. The update `u` is `w·v` with the
    CSA weights `w` from the partner images, or the cross-attention of the SDPA ablation.
    QCS with both terms learns `k = 1 + tanh(θ)`; the other variants have no θ.
    """

    def __init__(self, dim, num_branches, mlp_ratio=4.0, attention="csa", matrix="sd", form="inplace"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim * 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.theta = nn.Parameter(torch.zeros(())) if with_branches(num_branches).learns_k(matrix) else None
        self.attention, self.matrix, self.form = attention, matrix, form

    def forward(self, tokens):
        """`tokens`: G×B×N×C, the G images of each group. Returns the refined G×B×N×C tokens."""
        if self.form == "prenorm":
            q, v = self.proj(self.norm1(tokens)).chunk(2, dim=-1)
            x = tokens + self._update(q, v)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(tokens)
        q, v = self.proj(x).chunk(2, dim=-1)
        x = self.norm2(x + self._update(q, v))
        return x + self.mlp(x)

    def spatial_weights(self, tokens):
        """The CSA weight vectors `w` (G×B×N) this block uses for `tokens`; for visualisation."""
        if self.attention != "csa":
            raise ValueError("spatial weight maps exist only for CSA attention, not for the SDPA ablation")
        return self._weights(self.proj(self.norm1(tokens)).chunk(2, dim=-1)[0])

    def _k(self):
        """Eq. 9's `k = γ + tanh(θ)` with γ = 1 (θ starts at 0, so k starts at 1); None without θ."""
        return 1.0 + torch.tanh(self.theta) if self.theta is not None else None

    def _update(self, q, v):
        """The update `u`: `w·v` with the CSA weights, or the SDPA ablation's cross-attention."""
        if self.attention == "sdpa":
            return torch.stack(sdpa_updates(q.unbind(0), v.unbind(0), self._k(), self.matrix))
        return self._weights(q).unsqueeze(-1) * v

    def _weights(self, q):
        return torch.stack(csa_weights(q.unbind(0), self._k(), self.matrix))
