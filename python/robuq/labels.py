"""Class labels by id or by name: ``--class 207`` and ``--class "golden retriever"`` are the same sample.

The 1000 ImageNet-1k category names (index = class id, the order of DiT's and ADM's label ids, i.e. the
sorted WordNet synset ids n01440764 .. n15075141) are shipped in ``robuq/assets/imagenet_classes.txt``,
one per line. They were taken from torchvision 0.29.1 (``torchvision.models._meta._IMAGENET_CATEGORIES``),
a package that ships ImageNet's category names as one short, unique name per class (WordNet's first
lemma, made unique where two synsets share one: 134 "crane bird" vs 517 "crane", 638 "maillot" vs 639
"maillot tank suit"). robuq does not depend on torchvision; the table is data.

Beside it, ``robuq/assets/imagenet_synsets.txt`` holds each class's WordNet id and its full synonym list,
one line per class in id order: ``n01484850 great white shark, white shark, man-eater, ...`` (the
ILSVRC-2012 ``synset_words.txt`` / ``LOC_synset_mapping.txt`` table; two independent copies of it were
compared line by line before it was added). diffusers' ``DiTPipeline.get_label_ids`` accepts every one of
those synonyms ("white shark", "red panda", "tabby cat"); so does robuq. A class resolves from, in order:

1. an id (``207``);
2. a WordNet id (``n02099601``);
3. the short name (``golden retriever``; unique per class);
4. a synonym, when only one class has it. 19 synonyms belong to several classes ("crane", "panda",
   "cardigan", ...): where one of them is a class's short name that class wins ("crane" is 517, as with
   the short names alone), otherwise the name is refused with the candidates listed (diffusers silently
   takes the last class; we would rather ask).

Names match case-insensitively, with runs of spaces, ``_`` and ``-`` treated as one space, so
"Golden_Retriever" finds 207. Names are only known for 1000-class (ImageNet) models; other models take
ids.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

__all__ = [
    "IMAGENET_NUM_CLASSES",
    "LabelError",
    "imagenet_classes",
    "imagenet_synsets",
    "class_name",
    "resolve_class",
]

IMAGENET_NUM_CLASSES = 1000
_TABLE = Path(__file__).resolve().parent / "assets" / "imagenet_classes.txt"
_SYNSETS = Path(__file__).resolve().parent / "assets" / "imagenet_synsets.txt"


class LabelError(ValueError):
    """A class given by id or name that does not resolve; the message says why and what would."""


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id."""
    try:
        names = tuple(line.strip() for line in _TABLE.read_text(encoding="utf-8").splitlines())
    except OSError as e:
        raise LabelError(f"the ImageNet class table {_TABLE} cannot be read: {e.strerror or e}") from None
    if len(names) != IMAGENET_NUM_CLASSES or not all(names):
        raise LabelError(f"the ImageNet class table {_TABLE} is damaged: expected 1000 non-empty lines")
    return names


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per class id: (WordNet id, its synonyms) as in the ILSVRC-2012 table, e.g.
    ``("n01484850", ("great white shark", "white shark", "man-eater", ...))``."""
    try:
        lines = _SYNSETS.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LabelError(f"the ImageNet synset table {_SYNSETS} cannot be read: {e.strerror or e}") from None
    out = []
    for line in lines:
        wnid, _, rest = line.partition(" ")
        syns = tuple(s.strip() for s in rest.split(",") if s.strip())
        if not re.fullmatch(r"n\d{8}", wnid) or not syns:
            break
        out.append((wnid, syns))
    if len(out) != IMAGENET_NUM_CLASSES or [w for w, _ in out] != sorted(w for w, _ in out):
        raise LabelError(f"the ImageNet synset table {_SYNSETS} is damaged: expected 1000 sorted lines")
    return tuple(out)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {_norm(n): i for i, n in enumerate(imagenet_classes())}


@functools.lru_cache(maxsize=1)
def _synonyms() -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """(WordNet id -> class, normalised synonym -> the classes that have it)."""
    wnids, syn = {}, {}
    for i, (wnid, names) in enumerate(imagenet_synsets()):
        wnids[wnid] = i
        for name in names:
            ids = syn.setdefault(_norm(name), ())
            if i not in ids:
                syn[_norm(name)] = ids + (i,)
    return wnids, syn


def class_name(class_id: int, num_classes: int = IMAGENET_NUM_CLASSES) -> str | None:
    """The name of `class_id` for a model with `num_classes` classes (None unless it is an ImageNet model)."""
    if num_classes != IMAGENET_NUM_CLASSES or not 0 <= class_id < IMAGENET_NUM_CLASSES:
        return None
    return imagenet_classes()[class_id]


def resolve_class(token: str | int, num_classes: int) -> int:
    """A class id from an id (``207``, ``"207"``) or, for 1000-class models, an ImageNet name
    (``"golden retriever"``), a synonym (``"white shark"``) or a WordNet id (``"n02099601"``). LabelError
    when the id is out of range, the name is unknown (with the closest names and their ids as suggestions)
    or ambiguous."""
    if isinstance(token, bool):
        raise LabelError(f"class {token!r} is neither an id nor a name")
    if isinstance(token, int):
        value = token
    else:
        text = str(token).strip()
        if not text:
            raise LabelError("an empty class: give an id (e.g. 207) or, for ImageNet models, a name")
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None:
            return _resolve_name(text, num_classes)
    if not 0 <= value < num_classes:
        raise LabelError(f"class id {value} is out of range: this model has classes 0..{num_classes - 1}")
    return value


def _resolve_name(text: str, num_classes: int) -> int:
    if num_classes != IMAGENET_NUM_CLASSES:
        raise LabelError(
            f"class {text!r} is not a class id (an integer); class names are known only for ImageNet models "
            f"(1000 classes), this model has {num_classes}: give an id in 0..{num_classes - 1}"
        )
    key = _norm(text)
    index = _index()
    if key in index:
        return index[key]
    names = imagenet_classes()
    wnids, synonyms = _synonyms()
    if re.fullmatch(r"[nN]\d{8}", text):
        if text.lower() in wnids:
            return wnids[text.lower()]
        raise LabelError(f"unknown WordNet id {text!r}: not one of the 1000 ImageNet-1k synsets")
    ids = synonyms.get(key, ())
    if len(ids) == 1:
        return ids[0]
    if ids:
        options = ", ".join(f"{i} {names[i]!r}" for i in ids)
        raise LabelError(f"ImageNet class name {text!r} is ambiguous: it names {options}; give the id")
    close = difflib.get_close_matches(key, list(index), n=4, cutoff=0.6)
    # a name that contains the query (e.g. "retriever") is a likelier intent than a fuzzy neighbour
    containing = [k for k in index if key in k.split(" ") or (len(key) > 3 and key in k)]
    seen, hints = set(), []
    for k in containing[:6] + close:
        if k not in seen:
            seen.add(k)
            hints.append(f"{index[k]} {names[index[k]]!r}")
    hint = f"; did you mean {', '.join(hints[:6])}?" if hints else ""
    raise LabelError(f"unknown ImageNet class name {text!r}{hint}")
