"""Label maps: the closed set of classes a recipe trains and scores on.

A data dir's ``utt2emo`` keeps the corpus's own label strings; the recipe's
label map says which of them are classes (``labels``, in output order) and
which are merged into a class (``aliases``, e.g. IEMOCAP's ``exc -> hap``).
Anything else is outside the protocol: the validator reports it and
``--fix`` drops it, so a typo can never become a silent extra class.

File formats (``LabelMap.load``)::

    # conf/labels.yaml
    name: iemocap4
    labels: [ang, hap, neu, sad]
    aliases: {exc: hap}
    words: {ang: angry}      # optional: the word a text model reads for a class

or a plain text file with one label per line (``#`` starts a comment).

A class's *word* (:meth:`LabelMap.word`) is what a language model reads and
writes for it (ICL's enrolment labels and answers): ``words`` if given, else
the canonical word of a known corpus code (``ANG``, ``ang`` -> ``angry``), else
the label itself, lower-cased, when it is a canonical word or 4+ letters
(``bored``). A short code with none of these (MSP-Podcast's ``A``, IEMOCAP's
``fru``) has no word until the map gives one.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from sertk.common.fileio import write_text_atomic

# Shared vocabulary for cross-corpus work (train on some corpora, test on
# others): one adjective per class, lower case. Corpus recipes map their own
# codes onto these with ``aliases`` (see COMMON_ALIASES for the usual ones).
CANONICAL_EMOTIONS = (
    "neutral", "happy", "sad", "angry", "fearful", "disgusted",
    "surprised", "calm", "contempt", "other",
)

# Spellings found in public corpora that unambiguously name a canonical class
# (single letters are not: EmoDB's 'A' is fear, 'F' happiness).
# Protocol-specific merges (IEMOCAP's excited -> happy) are *not* here: they
# belong in the recipe's own label map.
COMMON_ALIASES = {
    "neu": "neutral", "neutrality": "neutral",
    "hap": "happy", "happiness": "happy", "joy": "happy",
    "sadness": "sad",
    "ang": "angry", "anger": "angry",
    "fea": "fearful", "fear": "fearful",
    "dis": "disgusted", "disgust": "disgusted",
    "sur": "surprised", "surprise": "surprised",
    "cal": "calm", "con": "contempt", "oth": "other",
}


class LabelError(ValueError):
    """A label outside the map, or a malformed label-map file."""


class LabelMap:
    """Ordered class labels plus aliases merged into them."""

    def __init__(self, labels: list[str], aliases: dict[str, str] | None = None, name: str | None = None,
                 words: dict[str, str] | None = None):
        labels = [str(x) for x in labels]
        aliases = {str(k): str(v) for k, v in (aliases or {}).items()}
        words = {str(k): str(v).strip() for k, v in (words or {}).items()}
        who = f"label map {name!r}" if name else "label map"
        if not labels:
            raise LabelError(f"{who}: no labels")
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise LabelError(f"{who}: duplicate labels {dup}")
        bad = [x for x in labels if not x or any(c.isspace() for c in x)]
        if bad:
            raise LabelError(f"{who}: labels must be single tokens without spaces, got {bad}")
        for src, dst in aliases.items():
            if dst not in labels:
                raise LabelError(f"{who}: alias {src!r} -> {dst!r} points outside the labels {labels}")
            if src in labels:
                raise LabelError(f"{who}: {src!r} is both a label and an alias; keep one")
        stray = sorted(set(words) - set(labels))
        if stray:
            raise LabelError(f"{who}: words given for {stray}, which are not labels {labels}")
        if any(not w for w in words.values()):
            raise LabelError(f"{who}: empty word in {words}")
        self._words = words
        self._labels = labels
        self._aliases = aliases
        self._index = {x: i for i, x in enumerate(labels)}
        self.name = name

    # ------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        """Read YAML ``{name, labels, aliases}`` or a one-label-per-line text file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise LabelError(f"{path}: cannot read label map: {e}") from e
        if path.suffix in (".yaml", ".yml"):
            try:
                obj = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise LabelError(f"{path}: not valid YAML: {e}") from e
            if isinstance(obj, list):
                obj = {"labels": obj}
            if not isinstance(obj, dict) or not isinstance(obj.get("labels"), list):
                raise LabelError(f"{path}: expected a mapping with a 'labels' list "
                                 "(and optional 'name', 'aliases')")
            unknown = set(obj) - {"name", "labels", "aliases", "words"}
            if unknown:
                raise LabelError(f"{path}: unknown keys {sorted(unknown)}; allowed: name, labels, aliases, words")
            aliases = obj.get("aliases") or {}
            if not isinstance(aliases, dict):
                raise LabelError(f"{path}: 'aliases' must be a mapping raw -> label")
            if not isinstance(obj.get("words") or {}, dict):
                raise LabelError(f"{path}: 'words' must be a mapping label -> word")
            try:
                return cls(obj["labels"], aliases, obj.get("name") or path.stem, obj.get("words"))
            except LabelError as e:
                raise LabelError(f"{path}: {e}") from e
        labels = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                labels.append(line)
        try:
            return cls(labels, None, path.stem)
        except LabelError as e:
            raise LabelError(f"{path}: {e}") from e

    @classmethod
    def from_dict(cls, d: dict) -> "LabelMap":
        return cls(d["labels"], d.get("aliases"), d.get("name"), d.get("words"))

    def to_dict(self) -> dict:
        out = {"name": self.name, "labels": list(self._labels), "aliases": dict(self._aliases)}
        return {**out, "words": dict(self._words)} if self._words else out

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    # -------------------------------------------------------------- access
    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    @property
    def num_classes(self) -> int:
        return len(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, raw: str) -> bool:
        return raw in self._index or raw in self._aliases

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelMap) and (self._labels, self._aliases) == (other._labels, other._aliases)

    def __repr__(self) -> str:
        return f"LabelMap(labels={self._labels}, aliases={self._aliases}, name={self.name!r})"

    def canonical(self, raw: str) -> str:
        """The class a raw corpus label belongs to; unknown labels raise."""
        if raw in self._index:
            return raw
        if raw in self._aliases:
            return self._aliases[raw]
        who = f" of label map {self.name!r}" if self.name else ""
        alias_txt = f", aliases {sorted(self._aliases)}" if self._aliases else ""
        raise LabelError(f"label {raw!r} is not one of the labels{who}: {self._labels}{alias_txt}")

    def index(self, label: str) -> int:
        """Class index of a label or alias (the model's output position)."""
        return self._index[self.canonical(label)]

    def word(self, label: str) -> str:
        """The word a language model reads for a class (module docstring); a code without one raises."""
        label = self.canonical(label)
        low = label.lower()
        word = self._words.get(label) or COMMON_ALIASES.get(low) or \
            (low if low in CANONICAL_EMOTIONS or (low.isalpha() and len(low) >= 4) else None)
        if word is None:
            who = f"label map {self.name!r}" if self.name else "label map"
            raise LabelError(f"{who}: class {label!r} is a code with no word for a language model to read; "
                             f"add 'words: {{{label}: <word>}}' to the label map")
        return word

    @property
    def words(self) -> list[str]:
        """Every class's word, in label order."""
        return [self.word(x) for x in self._labels]
