"""Dataset labels -> sets of model classes (``label_map``), and the built-in maps.

A pretrained model rarely shares its class names with the audited dataset: an ImageNet model has
118 dog breeds and no ``dog``. A label map sends each dataset label to one or more model classes
(indices or class names); a prediction is correct when it falls in the label's set, and
``target: label`` explains the set's highest-scoring class. Labels the map does not mention keep
matching class names (exactly, then case/spacing-insensitively). Torch-free, so the dataset report
can list the labels that map to nothing.

>>> sets = label_sets("imagenet9", imagenet_class_names)       # doctest: +SKIP
>>> len(sets["dog"]), sets["fish"][:3]                         # doctest: +SKIP
(116, (0, 1, 2))
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from common.registry import Registry

LabelMap = Mapping[str, Sequence[int | str]]

LABEL_MAPS: Registry[dict[str, tuple[int, ...]]] = Registry("label map")
"""Built-in label maps by name (``label_map: imagenet9``), dataset label -> model class indices."""


def _ranges(*spans: tuple[int, int] | int) -> tuple[int, ...]:
    out: list[int] = []
    for s in spans:
        out.extend(range(s[0], s[1] + 1) if isinstance(s, tuple) else [s])
    return tuple(out)


# ImageNet-9 superclasses over the ImageNet-1k indices (Xiao, Engstrom, Ilyas, Madry, "Noise or Signal:
# The Role of Image Backgrounds in Object Recognition", ICLR 2021). Source: in_to_in9.json of
# github.com/MadryLab/backgrounds_challenge (the benchmark's own evaluation map; indices mapped to -1
# there belong to no superclass). Labels are the benchmark's class folder names without the number.
LABEL_MAPS.add("imagenet9", {
    "dog": _ranges((151, 170), (173, 268)),
    "bird": _ranges((7, 24), (87, 100), (127, 146)),
    "wheeled vehicle": (407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 586, 603, 609, 612,
                        627, 656, 661, 665, 670, 671, 675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817,
                        820, 829, 847, 864, 866, 867, 870, 880),
    "reptile": _ranges((33, 68)),
    "carnivore": _ranges((269, 280), (286, 299), (356, 362), (387, 388)),
    "insect": _ranges((300, 326)),
    "musical instrument": (401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641,
                           642, 683, 684, 687, 699, 776, 822, 875, 881, 889),
    "primate": _ranges((365, 384)),
    "fish": _ranges((0, 6), (389, 397)),
})


def normalise_name(name: str) -> str:
    """Case-, spacing-, underscore- and hyphen-insensitive form of a class name."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def builtin_label_map(name: str) -> dict[str, tuple[int, ...]]:
    """A built-in map by name; an unknown name raises, listing the valid ones."""
    return LABEL_MAPS.get(name)


class ClassIndex:
    """Class names -> output indices: exact first, then case/spacing-insensitive."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        self.exact = {c: i for i, c in enumerate(self.classes)}
        self.loose: dict[str, int] = {}
        for c, i in self.exact.items():
            self.loose.setdefault(normalise_name(c), i)

    def index(self, name: str) -> int:
        """Output index of a class name, -1 when the model has no such class."""
        if name in self.exact:
            return self.exact[name]
        return self.loose.get(normalise_name(name), -1)


def label_sets(label_map: str | LabelMap | None, classes: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The map resolved against a model's ``classes``: label -> sorted, distinct output indices.

    Raises ``ValueError`` naming the label and the entry when an index is out of range or a class
    name is not among ``classes``.
    """
    if label_map is None:
        return {}
    entries = builtin_label_map(label_map) if isinstance(label_map, str) else label_map
    index = ClassIndex(classes)
    out: dict[str, tuple[int, ...]] = {}
    for label, targets in entries.items():
        if isinstance(targets, str | int):
            targets = [targets]
        found: set[int] = set()
        for t in targets:
            if isinstance(t, bool) or not isinstance(t, int | str):
                raise TypeError(f"label_map[{label!r}]: {t!r} is neither a class index nor a class name")
            i = t if isinstance(t, int) else index.index(t)
            if isinstance(t, int) and not 0 <= t < len(classes):
                raise ValueError(f"label_map[{label!r}]: class index {t} is outside the model's {len(classes)} classes")
            if i < 0:
                raise ValueError(f"label_map[{label!r}]: {t!r} is not a class of the model ({len(classes)} classes)")
            found.add(i)
        if not found:
            raise ValueError(f"label_map[{label!r}] maps to no class")
        out[label] = tuple(sorted(found))
    return out


def unmapped_labels(labels: Sequence[str], label_map: str | LabelMap | None,
                    classes: Sequence[str] | None) -> list[str]:
    """Dataset labels that map to no model class: neither in ``label_map`` nor a class name.

    With ``classes`` unknown (``None``) only labels the map covers count as mapped.
    """
    sets = label_sets(label_map, classes) if classes is not None else dict(
        builtin_label_map(label_map) if isinstance(label_map, str) else label_map or {})
    index = ClassIndex(classes or ())
    return sorted({lab for lab in labels if lab not in sets and index.index(lab) < 0})
