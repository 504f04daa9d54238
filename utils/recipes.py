"""Per-dataset training defaults: the released scripts' settings (SPEC §6), one table."""

# Train augmentations of SPEC §6. Test transform: Resize((224,224)) for "A", Resize(s)+CenterCrop for "B".
AUG_A = dict(kind="A")
AUG_A_NO_JITTER = dict(kind="A", color_jitter=False)


def aug_b(resize, rotation, erase_scale=(0.02, 0.1)):
    return dict(kind="B", resize=resize, rotation=rotation, erase_scale=erase_scale)


# (arch, dataset) → epochs, batch size, lr, cross-ViT dropout, base-ViT dropout, train augmentation
RELEASED = {
    ("dcs", "RAF-DB"): (200, 48, 9e-6, 0.2, 0.0, AUG_A),
    ("qcs", "RAF-DB"): (200, 24, 3e-6, 0.0, 0.0, AUG_A),
    ("dcs", "FERPlus"): (150, 24, 8e-6, 0.2, 0.0, aug_b(234, 10)),
    ("qcs", "FERPlus"): (150, 24, 3.5e-6, 0.2, 0.0, aug_b(232, 10)),
    ("dcs", "AffectNet-7"): (100, 48, 9e-6, 0.4, 0.0, aug_b(236, 12, (0.03, 0.1))),
    ("qcs", "AffectNet-7"): (150, 24, 4e-6, 0.4, 0.0, aug_b(236, 12, (0.03, 0.1))),
    ("dcs", "AffectNet-8"): (50, 48, 8e-6, 0.5, 0.2, AUG_A_NO_JITTER),
    ("qcs", "AffectNet-8"): (100, 24, 4e-6, 0.0, 0.0, aug_b(236, 12, (0.03, 0.1))),
}
# Datasets without a released recipe use the RAF-DB one; the demo trains a tiny model quickly.
FALLBACK_DATASET = "RAF-DB"
DEMO = {"dcs": (6, 16, 1e-3, 0.0, 0.0, AUG_A), "qcs": (6, 8, 1e-3, 0.0, 0.0, AUG_A)}
BALANCED_BY_DEFAULT = ("AffectNet-7", "AffectNet-8")
# The released QCS AffectNet sampler draws the negative's class uniformly and takes len//12 anchors.
NEGATIVES_BY_CLASS = {("qcs", "AffectNet-7"), ("qcs", "AffectNet-8")}
ANCHOR_DIVISOR = {"dcs": 8, "qcs": 12}


def recipe(arch, dataset):
    """Default settings for training `arch` ("dcs"/"qcs") on `dataset`, as a dict."""
    if dataset == "demo":
        row = DEMO[arch]
    else:
        row = RELEASED.get((arch, dataset), RELEASED[(arch, FALLBACK_DATASET)])
    epochs, batch_size, lr, cross_drop, drop, augmentation = row
    return dict(epochs=epochs, batch_size=batch_size, lr=lr, cross_drop=cross_drop, drop=drop,
                augmentation=dict(augmentation), balanced_sampler=dataset in BALANCED_BY_DEFAULT,
                negatives="by_class" if (arch, dataset) in NEGATIVES_BY_CLASS else "by_sample",
                anchor_divisor=ANCHOR_DIVISOR[arch],
                size="tiny" if dataset == "demo" else "paper",
                image_size=112 if dataset == "demo" else 224)
