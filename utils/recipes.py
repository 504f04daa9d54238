"""Per-dataset training defaults: the authors' released scripts' settings, one table."""
from dataclasses import asdict, dataclass, field

from models.architectures import architecture

from .settings import RunSettings

# Train augmentations (data_preprocessing.transforms); the test transform follows from them.
AUG_A = dict(kind="A")
AUG_A_NO_JITTER = dict(kind="A", color_jitter=False)


def aug_b(resize, rotation, erase_scale=(0.02, 0.1)):
    return dict(kind="B", resize=resize, rotation=rotation, erase_scale=erase_scale)


@dataclass(frozen=True)
class Recipe:
    """The defaults of one (architecture, dataset) pair."""
    epochs: int
    batch_size: int  # anchors per step and process
    lr: float
    cross_drop: float  # dropout of the cross ViT
    drop: float  # dropout of the base ViT
    augmentation: dict = field(default_factory=lambda: dict(AUG_A))
    size: str = "paper"
    image_size: int = 224


RELEASED = {
    ("dcs", "RAF-DB"): Recipe(epochs=200, batch_size=48, lr=9e-6, cross_drop=0.2, drop=0.0),
    ("qcs", "RAF-DB"): Recipe(epochs=200, batch_size=24, lr=3e-6, cross_drop=0.0, drop=0.0),
    ("dcs", "FERPlus"): Recipe(epochs=150, batch_size=24, lr=8e-6, cross_drop=0.2, drop=0.0,
                               augmentation=aug_b(234, 10)),
    ("qcs", "FERPlus"): Recipe(epochs=150, batch_size=24, lr=3.5e-6, cross_drop=0.2, drop=0.0,
                               augmentation=aug_b(232, 10)),
    ("dcs", "AffectNet-7"): Recipe(epochs=100, batch_size=48, lr=9e-6, cross_drop=0.4, drop=0.0,
                                   augmentation=aug_b(236, 12, (0.03, 0.1))),
    ("qcs", "AffectNet-7"): Recipe(epochs=150, batch_size=24, lr=4e-6, cross_drop=0.4, drop=0.0,
                                   augmentation=aug_b(236, 12, (0.03, 0.1))),
    ("dcs", "AffectNet-8"): Recipe(epochs=50, batch_size=48, lr=8e-6, cross_drop=0.5, drop=0.2,
                                   augmentation=AUG_A_NO_JITTER),
    ("qcs", "AffectNet-8"): Recipe(epochs=100, batch_size=24, lr=4e-6, cross_drop=0.0, drop=0.0,
                                   augmentation=aug_b(236, 12, (0.03, 0.1))),
}
# The demo trains a tiny model from scratch in under five CPU minutes; 56 px is the tiny model's input.
DEMO = {
    "dcs": Recipe(epochs=7, batch_size=16, lr=1e-3, cross_drop=0.0, drop=0.0, size="tiny", image_size=56),
    "qcs": Recipe(epochs=7, batch_size=8, lr=1e-3, cross_drop=0.0, drop=0.0, size="tiny", image_size=56),
}
# Datasets without a released recipe (FER2013, folder) use the RAF-DB one; `fallback_note` says so.
FALLBACK_DATASET = "RAF-DB"
BALANCED_BY_DEFAULT = ("AffectNet-7", "AffectNet-8")
# The released QCS AffectNet sampler draws the negative's class uniformly and takes len//12 anchors.
NEGATIVES_BY_CLASS = {("qcs", "AffectNet-7"), ("qcs", "AffectNet-8")}


def recipe(arch, dataset):
    """Default settings for training `arch` ("dcs"/"qcs") on `dataset`, as a dict: the `Recipe`
    fields plus the sampler's (`balanced_sampler`, `negatives`, `anchor_divisor`)."""
    row = DEMO[arch] if dataset == "demo" else RELEASED.get((arch, dataset), RELEASED[(arch, FALLBACK_DATASET)])
    return dict(asdict(row), balanced_sampler=dataset in BALANCED_BY_DEFAULT,
                negatives="by_class" if (arch, dataset) in NEGATIVES_BY_CLASS else "by_sample",
                anchor_divisor=architecture(arch).anchor_divisor)


def fallback_note(settings):
    """For a run on a dataset without a released recipe: one line naming the recipe it takes, with
    the values that matter (one given on the command line is marked), else None. `settings`:
    RunSettings, or their dict."""
    settings = RunSettings.of(settings)
    arch, dataset = settings.recipe_arch, settings.dataset
    if dataset == "demo" or (arch, dataset) in RELEASED:
        return None
    defaults = recipe(arch, dataset)
    parts = [f"{label} {_shown(getattr(settings, key))}"
             + ("" if getattr(settings, key) == defaults[key] else f" (given; the recipe's {_shown(defaults[key])})")
             for key, label in (("lr", "lr"), ("epochs", "epochs"), ("batch_size", "batch size"),
                                ("augmentation", "augmentation"))]
    return f"{dataset} has no released recipe: it takes {FALLBACK_DATASET}'s {arch.upper()} recipe: {', '.join(parts)}"


def _shown(value):
    if isinstance(value, dict):
        return " ".join(f"{key}={item}" for key, item in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)
