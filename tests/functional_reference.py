"""Independent functional reference of the DCS / QCS forward pass (eval mode).

Written directly from the model description (IR50 stages 1-3, downsample and
token embeddings, base ViT, cross similarity attention, cross ViT) using only
``torch.nn.functional`` primitives and the authors' state-dict layout. It
shares no code with ``models/`` so that tests can compare the two.
"""
import re

import torch
import torch.nn.functional as F

IMAGE_SIZE = 112
NUM_HEADS = 8
VIT_LN_EPS = 1e-6
CROSS_LN_EPS = 1e-5
BN_EPS = 1e-5
TOKENS_PER_LEVEL = 49
NUM_FEATURE_LEVELS = 3


class _Weights:
    """Read-only view of a state dict, cast to one dtype, `module.` stripped."""

    def __init__(self, state_dict, dtype):
        self.tensors = {}
        for key, value in state_dict.items():
            if key.startswith("module."):
                key = key[len("module."):]
            self.tensors[key] = value.to(dtype) if value.is_floating_point() else value

    def __getitem__(self, key):
        return self.tensors[key]

    def __contains__(self, key):
        return key in self.tensors


# ----------------------------------------------------------------- backbone
def _batch_norm(x, w, prefix):
    return F.batch_norm(x, w[prefix + ".running_mean"], w[prefix + ".running_var"],
                        w[prefix + ".weight"], w[prefix + ".bias"],
                        training=False, eps=BN_EPS)


def _ir_unit(x, w, prefix, stride):
    """bottleneck_IR: res = BN, conv3x3, PReLU, conv3x3(stride), BN; plus shortcut."""
    res = _batch_norm(x, w, prefix + ".res_layer.0")
    res = F.conv2d(res, w[prefix + ".res_layer.1.weight"], stride=1, padding=1)
    res = F.prelu(res, w[prefix + ".res_layer.2.weight"])
    res = F.conv2d(res, w[prefix + ".res_layer.3.weight"], stride=stride, padding=1)
    res = _batch_norm(res, w, prefix + ".res_layer.4")
    if prefix + ".shortcut_layer.0.weight" in w:
        short = F.conv2d(x, w[prefix + ".shortcut_layer.0.weight"], stride=stride)
        short = _batch_norm(short, w, prefix + ".shortcut_layer.1")
    else:
        short = F.max_pool2d(x, kernel_size=1, stride=stride)
    return res + short


def _units_in_stage(w, stage):
    pattern = re.compile(rf"ir_back\.body{stage}\.(\d+)\.")
    indices = {int(m.group(1)) for key in w.tensors for m in [pattern.match(key)] if m}
    return max(indices) + 1


def _ir50_stages(x, w):
    """Stem and stages 1-3; returns the three stage outputs."""
    x = F.conv2d(x, w["ir_back.input_layer.0.weight"], stride=1, padding=1)
    x = _batch_norm(x, w, "ir_back.input_layer.1")
    x = F.prelu(x, w["ir_back.input_layer.2.weight"])
    outputs = []
    for stage in (1, 2, 3):
        for unit in range(_units_in_stage(w, stage)):
            x = _ir_unit(x, w, f"ir_back.body{stage}.{unit}", 2 if unit == 0 else 1)
        outputs.append(x)
    return outputs


def _tokens(images, w):
    """Image -> B x 147 x 768 tokens (levels 1, 2, 3 concatenated)."""
    x = F.interpolate(images, size=IMAGE_SIZE)  # default mode is nearest
    x1, x2, x3 = _ir50_stages(x, w)
    x1 = F.conv2d(x1, w["conv1.weight"], w["conv1.bias"], stride=2, padding=1)
    x2 = F.conv2d(x2, w["conv2.weight"], w["conv2.bias"], stride=2, padding=1)
    x3 = F.conv2d(x3, w["conv3.weight"], w["conv3.bias"], stride=2, padding=1)
    e1 = F.conv2d(x1, w["embed_q.0.weight"], w["embed_q.0.bias"], stride=2, padding=1)
    e1 = F.conv2d(e1, w["embed_q.1.weight"], w["embed_q.1.bias"], stride=2, padding=1)
    e2 = F.conv2d(x2, w["embed_k.0.weight"], w["embed_k.0.bias"], stride=2, padding=1)
    e3 = F.conv2d(x3, w["embed_v.proj.weight"], w["embed_v.proj.bias"])
    levels = [e.flatten(2).transpose(1, 2) for e in (e1, e2, e3)]
    return torch.cat(levels, dim=1)


# ---------------------------------------------------------------------- ViT
def _layer_norm(x, w, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), w[prefix + ".weight"], w[prefix + ".bias"], eps)


def _linear(x, w, prefix):
    return F.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])


def _mlp(x, w, prefix):
    return _linear(F.gelu(_linear(x, w, prefix + ".fc1")), w, prefix + ".fc2")


def _self_attention(x, w, prefix):
    batch, length, channels = x.shape
    head_dim = channels // NUM_HEADS
    qkv = _linear(x, w, prefix + ".qkv").reshape(batch, length, 3, NUM_HEADS, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each B x heads x L x head_dim
    scores = torch.matmul(q, k.transpose(-2, -1)) * (head_dim ** -0.5)
    out = torch.matmul(F.softmax(scores, dim=-1), v)
    out = out.transpose(1, 2).reshape(batch, length, channels)
    return _linear(out, w, prefix + ".proj")


def _vit(tokens, w, prefix):
    """Returns (class-token logits, normed patch tokens)."""
    batch = tokens.shape[0]
    cls = w[prefix + ".cls_token"].expand(batch, -1, -1)
    x = torch.cat([cls, tokens], dim=1) + w[prefix + ".pos_embed"]
    block = 0
    while (f"{prefix}.blocks.{block}.norm1.weight") in w:
        bp = f"{prefix}.blocks.{block}"
        x = x + _self_attention(_layer_norm(x, w, bp + ".norm1", VIT_LN_EPS), w, bp + ".attn")
        x = x + _mlp(_layer_norm(x, w, bp + ".norm2", VIT_LN_EPS), w, bp + ".mlp")
        block += 1
    x = _layer_norm(x, w, prefix + ".norm", VIT_LN_EPS)
    cls_out = x[:, 0]
    gate = _linear(F.relu(_linear(cls_out, w, prefix + ".se_block.linear1")), w,
                   prefix + ".se_block.linear2")
    logits = _linear(cls_out * torch.sigmoid(gate), w, prefix + ".head.linear")
    return logits, x[:, 1:]


# ---------------------------------------------------------------------- CSA
def _pairwise_distance(a, b):
    """Euclidean distance between rows of a (B x N x C) and b (B x M x C)."""
    squared = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(dim=-1)
    return torch.sqrt(torch.clamp(squared, min=0.0))


def _shifted_distance(a, b):
    """D - min(D), the min over the whole B x N x M tensor."""
    dist = _pairwise_distance(a, b)
    return dist - dist.min()


def _similarity(a, b):
    dist = _shifted_distance(a, b)
    return dist.max() - dist


def _aggregate(matrix):
    """agg(M)[b, j] = sum_i M[b, i, j] / ||M[b, i, :]||, key image on columns."""
    row_norm = torch.sqrt((matrix * matrix).sum(dim=-1, keepdim=True))
    return (matrix / torch.clamp(row_norm, min=1e-12)).sum(dim=1)


def _cross_weights(queries, w, prefix, matrix="sd"):
    """One spatial weight vector (B x 49) per image of the group.

    matrix (QCS): "sd" mixes S + k*D, "s" and "d" use one term and no k.
    """
    if len(queries) == 2:
        q_a, q_p = queries
        s_ap = _similarity(q_a, q_p)  # rows a, columns p
        w_a = F.softmax(_aggregate(s_ap.transpose(1, 2)), dim=1)
        w_p = F.softmax(_aggregate(s_ap), dim=1)
        return [w_a, w_p]
    q1, q2, q3, q4 = queries
    s12 = _similarity(q1, q2)
    s34 = _similarity(q3, q4)
    d13 = _shifted_distance(q1, q3)
    d24 = _shifted_distance(q2, q4)
    same = [_aggregate(s12.transpose(1, 2)), _aggregate(s12), _aggregate(s34.transpose(1, 2)),
            _aggregate(s34)]
    different = [_aggregate(d13.transpose(1, 2)), _aggregate(d24.transpose(1, 2)), _aggregate(d13),
                 _aggregate(d24)]
    if matrix == "s":
        scores = same
    elif matrix == "d":
        scores = different
    else:
        k = 1.0 + torch.tanh(w[prefix + ".theta"])
        scores = [s + k * d for s, d in zip(same, different)]
    return [F.softmax(s, dim=1) for s in scores]


def _cross_attention(q_x, q_y, v_y):
    """Each position of x: softmax over y's positions of q_x . q_y / sqrt(C), times v_y."""
    scores = torch.matmul(q_x, q_y.transpose(1, 2)) / (q_x.shape[-1] ** 0.5)
    return torch.matmul(F.softmax(scores, dim=-1), v_y)


def _sdpa_updates(queries, values):
    """DCS scaled dot-product ablation: each image attends to its partner's values."""
    (q_a, q_p), (v_a, v_p) = queries, values
    return [_cross_attention(q_a, q_p, v_p), _cross_attention(q_p, q_a, v_a)]


def _cross_block(level_tokens, w, prefix, block_form="inplace", matrix="sd", attention="csa"):
    """Cross block of one level applied to the group (list of B x 49 x C).

    block_form "inplace": the residuals add to LN1(x), and LN2 is applied before the MLP's
    residual; "prenorm": a standard pre-norm block on the un-normalised x.
    """
    normed = [_layer_norm(x, w, prefix + ".norm1", CROSS_LN_EPS) for x in level_tokens]
    projected = [_linear(x, w, prefix + ".proj") for x in normed]
    channels = normed[0].shape[-1]
    queries = [p[..., :channels] for p in projected]
    values = [p[..., channels:] for p in projected]
    if attention == "sdpa":
        updates = _sdpa_updates(queries, values)
    else:
        weights = _cross_weights(queries, w, prefix, matrix)
        updates = [weight[..., None] * v for weight, v in zip(weights, values)]
    outputs = []
    for x, n, update in zip(level_tokens, normed, updates):
        if block_form == "prenorm":
            x = x + update
            outputs.append(x + _mlp(_layer_norm(x, w, prefix + ".norm2", CROSS_LN_EPS), w, prefix + ".mlp"))
        else:
            x = _layer_norm(n + update, w, prefix + ".norm2", CROSS_LN_EPS)
            outputs.append(x + _mlp(x, w, prefix + ".mlp"))
    return outputs


# ------------------------------------------------------------------- entry
def reference_forward(state_dict, images, num_classes, block_form="inplace", matrix="sd", attention="csa"):
    """Eval-mode logits for 1 (base only), 2 (DCS) or 4 (QCS) image batches.

    Returns [base logits] for one image, otherwise
    [base_1..base_n, cross_1..cross_n].
    """
    if len(images) not in (1, 2, 4):
        raise ValueError(f"expected 1, 2 or 4 image batches, got {len(images)}")
    dtype = images[0].dtype
    w = _Weights(state_dict, dtype)
    for vit in ("VIT_base", "VIT_cross"):
        key = vit + ".head.linear.weight"
        if key in w and w[key].shape[0] != num_classes:
            raise ValueError(f"{key} has {w[key].shape[0]} rows, expected {num_classes} classes")
    base_logits, base_tokens = [], []
    for image in images:
        logits, patches = _vit(_tokens(image, w), w, "VIT_base")
        base_logits.append(logits)
        base_tokens.append(patches)
    if len(images) == 1:
        return base_logits
    refined = [[] for _ in images]
    for level in range(NUM_FEATURE_LEVELS):
        chunk = slice(level * TOKENS_PER_LEVEL, (level + 1) * TOKENS_PER_LEVEL)
        outs = _cross_block([t[:, chunk] for t in base_tokens], w,
                            f"cross_attention_{level + 1}", block_form, matrix, attention)
        for per_image, out in zip(refined, outs):
            per_image.append(out)
    cross_logits = []
    for tokens, parts in zip(base_tokens, refined):
        logits, _ = _vit(tokens + torch.cat(parts, dim=1), w, "VIT_cross")
        cross_logits.append(logits)
    return base_logits + cross_logits
