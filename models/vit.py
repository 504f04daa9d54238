"""The token ViT used for the base branch and the cross connection (METHOD.md §1)."""
import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a qkv projection (bias) and an output projection."""

    def __init__(self, dim, num_heads, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Attention dropout is 0 in every released model, so the fused kernel is exact.
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """fc1 → GELU → dropout → fc2 → dropout."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: `x + Attn(LN(x))`, then `x + MLP(LN(x))`."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, drop=0.0, proj_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SEHead(nn.Module):
    """SE gate on the class token, `x * sigmoid(fc2(relu(fc1(x))))`, then a linear classifier."""

    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x))))
        return self.classifier(x * gate)


class TokenViT(nn.Module):
    """Class token + position embedding + `depth` blocks + LN, classified by an SE head.

    `forward(tokens)` takes B×T×C tokens and returns `(logits, patch_tokens)`, the
    patch tokens being the T normalised output tokens. `linear_init` draws the weights of its
    linear layers: "released" from a truncated normal with std 0.01 (the release), "xavier"
    Xavier-uniform, whose larger weights let the class token depend on the image from the first
    step (METHOD.md §8); biases start at 0 and LayerNorms at PyTorch's 1 and 0.
    """

    def __init__(self, num_tokens, num_classes, dim, depth, num_heads, mlp_ratio=4.0, drop=0.0, proj_drop=0.0,
                 linear_init="released"):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, drop, proj_drop) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = SEHead(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if linear_init == "xavier":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.trunc_normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, tokens):
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.pos_drop(torch.cat((cls, tokens), dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0]), x[:, 1:]
