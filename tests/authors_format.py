"""Writing weights in the authors' released checkpoint layout, for the tests."""
import numpy as np
import torch

AUTHOR_NAMES = [  # our name prefix → the authors'
    ("base.backbone.", "ir_back."), ("base.downsample.0.", "conv1."), ("base.downsample.1.", "conv2."),
    ("base.downsample.2.", "conv3."), ("base.embed.0.", "embed_q."), ("base.embed.1.", "embed_k."),
    ("base.embed.2.0.", "embed_v.proj."), ("base.vit.", "VIT_base."), ("cross_head.", "VIT_cross."),
    ("cross_blocks.0.", "cross_attention_1."), ("cross_blocks.1.", "cross_attention_2."),
    ("cross_blocks.2.", "cross_attention_3."),
]


def as_authors(model):
    """The model's weights renamed by hand to the authors' layout, with some of their unused keys."""
    out = {}
    for key, value in model.state_dict().items():
        for ours, theirs in AUTHOR_NAMES:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        key = key.replace("head.fc1.", "se_block.linear1.").replace("head.fc2.", "se_block.linear2.")
        key = key.replace("head.classifier.", "head.linear.")
        out["module." + key] = value.clone()
    out["module.ir_back.output_layer.3.weight"] = torch.zeros(4, 4)
    out["module.VIT_base.eca_block.conv.weight"] = torch.zeros(1, 1, 5)
    out["module.VIT_cross.blocks.0.conv.weight"] = torch.zeros(3, 3, 1)
    return out


class RecorderMeter_loss:  # the authors pickle these from their training script's __main__
    def __init__(self):
        self.epoch_losses = np.zeros((3, 2), dtype=np.float32)


def write_authors_checkpoint(path, state_dict, monkeypatch):
    """An authors'-format `.pth` whose recorders are pickled as `__main__` classes."""
    import __main__
    monkeypatch.setattr(RecorderMeter_loss, "__module__", "__main__")
    monkeypatch.setattr(__main__, "RecorderMeter_loss", RecorderMeter_loss, raising=False)
    torch.save({"epoch": 7, "state_dict": state_dict, "best_acc": torch.tensor(91.5),
                "optimizer": {"state": {}, "param_groups": []},
                "recorder": RecorderMeter_loss(), "recorder_m": RecorderMeter_loss()}, path)
    monkeypatch.delattr(__main__, "RecorderMeter_loss")  # a reader has no such class
