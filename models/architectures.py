"""The architectures, each described once: the baseline, DCS and QCS (METHOD.md §§2–4).

Every "which architecture" decision reads this table: the training group and the target of each
branch, the image pairs the cross similarity attention compares, the balanced sampler's share of
anchors, the released cross-block forms and the keys that tell their weights apart. A new variant
is one `register` call plus the wiring its new parts need. No torch here: settings code reads it too.
"""
from dataclasses import dataclass

# The class each role of a training group has: the anchor's label y or the negative's y_n
# (data_preprocessing.sampling draws the roles).
ROLE_TARGETS = {"anchor": "y", "positive": "y", "negative": "y_n", "negative2": "y_n"}


@dataclass(frozen=True)
class Architecture:
    """One architecture.

    - `name`: the `arch` setting and the name in checkpoints; `title`: its name on screen.
    - `roles`: the training group, one image per branch, in branch order.
    - `same_class_pairs` / `diff_class_pairs`: the branch pairs whose similarity S / distance D
      feed the CSA weights (METHOD.md §2); none for the baseline.
    - `anchor_divisor`: the balanced sampler draws len // divisor anchors an epoch (released
      recipes; None where the training script's recipe decides).
    - `prenorm_classes`: class counts whose released checkpoints use the pre-norm cross block.
    - `weight_keys`: `(prefix, suffix)` of keys its state dicts hold; a state dict is the
      architecture with the most of these all present.
    - `script`: trained by its own `main_<TITLE>.py`, with released recipes; `cross_module`: that
      script's description of what it adds to the base branch.
    """
    name: str
    title: str
    roles: tuple
    same_class_pairs: tuple = ()
    diff_class_pairs: tuple = ()
    anchor_divisor: int | None = None
    prenorm_classes: tuple = ()
    weight_keys: tuple = ()
    script: bool = False
    cross_module: str = ""

    @property
    def branches(self):
        return len(self.roles)

    @property
    def cross(self):
        """Whether it has a cross module (more than one branch)."""
        return self.branches > 1

    @property
    def targets(self):
        """The target of each branch, "y" or "y_n", in branch order."""
        return tuple(ROLE_TARGETS[role] for role in self.roles)

    def learns_k(self, matrix):
        """Whether its cross blocks learn k = 1 + tanh(θ): both S and D terms are used."""
        return bool(self.same_class_pairs and self.diff_class_pairs) and matrix == "sd"

    def released_cross_block(self, num_classes):
        """The cross-block form of its released checkpoints with `num_classes` classes."""
        return "prenorm" if num_classes in self.prenorm_classes else "inplace"


ARCHITECTURES = {}


def register(architecture):
    """Add `architecture` to the table (its name and branch count must be new); returns it."""
    if architecture.name in ARCHITECTURES or any(a.branches == architecture.branches
                                                 for a in ARCHITECTURES.values()):
        raise ValueError(f"an architecture named {architecture.name!r} or with "
                         f"{architecture.branches} branches is registered already")
    if not set(architecture.roles) <= set(ROLE_TARGETS):  # the one call a new variant makes: say what is wrong there
        raise ValueError(f"roles must be among {', '.join(ROLE_TARGETS)}, got {architecture.roles}")
    ARCHITECTURES[architecture.name] = architecture
    return architecture


def architecture(name):
    """The registered architecture called `name`; ValueError naming the choices otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def with_branches(branches):
    """The registered architecture whose group has `branches` images."""
    for candidate in ARCHITECTURES.values():
        if candidate.branches == branches:
            return candidate
    raise ValueError(f"no architecture has {branches} branches")


def scripts():
    """The names of the architectures with their own training script ("dcs", "qcs")."""
    return tuple(name for name, a in ARCHITECTURES.items() if a.script)


def is_cross(name):
    """Whether `name` is a registered architecture with a cross module (False for None)."""
    return name in ARCHITECTURES and ARCHITECTURES[name].cross


def describe_keys(keys):
    """The name of the architecture whose weights the state-dict keys `keys` hold."""
    held = [a for a in ARCHITECTURES.values()
            if all(any(k.startswith(prefix) and k.endswith(suffix) for k in keys) for prefix, suffix in a.weight_keys)]
    return max(held, key=lambda a: len(a.weight_keys)).name


CROSS_BLOCKS = ("cross_blocks.", "")
register(Architecture("base", "baseline", ("anchor",)))
register(Architecture("dcs", "DCS", ("anchor", "positive"), same_class_pairs=((0, 1),), anchor_divisor=8,
                      prenorm_classes=(8,), weight_keys=(CROSS_BLOCKS,), script=True,
                      cross_module="two-branch cross module"))
# The closed loop 1–2 (S), 2–4 (D), 4–3 (S), 3–1 (D) over (anchor, positive, negative, negative2).
register(Architecture("qcs", "QCS", ("anchor", "positive", "negative", "negative2"),
                      same_class_pairs=((0, 1), (2, 3)), diff_class_pairs=((0, 2), (1, 3)), anchor_divisor=12,
                      weight_keys=(CROSS_BLOCKS, ("cross_blocks.", ".theta")), script=True,
                      cross_module="four-branch cross module"))
