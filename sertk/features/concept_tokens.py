"""Acoustic concept tokens: six interpretable, binned summaries of eGeMAPS functionals.

Each concept (energy, pitch, dynamics, brightness, formants, voice quality)
is a score: the mean of its eGeMAPS functionals, each z-scored with training
statistics and signed so that a larger score means "more" of the concept
(:data:`TOKEN_FEATURES`). Scores are cut into levels at quantiles of the
training scores (tertiles for low/mid/high), over all training utterances
(``scope="global"``) or per speaker (``scope="speaker"``). Tokens render as
short text for a language-model prompt: ``energy: high, pitch: mid, ...``.
The perturbations (shuffled, permuted, conflicting, corrupted, nonsense) are the controls of the
token experiments. See docs/concept_tokens.md for the table and the protocol.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sertk.common.fileio import write_json_atomic, write_text_atomic
from sertk.data.datadir import DataDir, byte_sorted, read_table

log = logging.getLogger(__name__)

CONCEPTS = ("energy", "pitch", "dynamics", "brightness", "formants", "voice quality")

# concept -> ((eGeMAPSv02 functional, sign), ...); sign -1: a larger value means less of the concept.
TOKEN_FEATURES: dict[str, tuple[tuple[str, int], ...]] = {
    "energy": (("loudness_sma3_amean", +1), ("equivalentSoundLevel_dBp", +1)),
    "pitch": (("F0semitoneFrom27.5Hz_sma3nz_amean", +1),),
    "dynamics": (("loudness_sma3_stddevNorm", +1), ("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", +1)),
    "brightness": (("alphaRatioV_sma3nz_amean", +1), ("hammarbergIndexV_sma3nz_amean", -1)),
    "formants": (("F1frequency_sma3nz_amean", +1), ("F2frequency_sma3nz_amean", +1)),
    "voice quality": (("HNRdBACF_sma3nz_amean", +1), ("jitterLocal_sma3nz_amean", -1),
                      ("shimmerLocaldB_sma3nz_amean", -1)),
}

# What a high score means (docs and prompts); low is the opposite.
HIGH_MEANS = {
    "energy": "loud", "pitch": "high-pitched", "dynamics": "varied loudness and intonation (lively)",
    "brightness": "bright, more high-frequency energy", "formants": "high F1/F2 (open, fronted vowels)",
    "voice quality": "clear, periodic voice (low jitter/shimmer, high HNR)",
}

DEFAULT_LEVELS = {
    2: ("low", "high"),
    3: ("low", "mid", "high"),
    4: ("very low", "low", "high", "very high"),
    5: ("very low", "low", "mid", "high", "very high"),
}
SCOPES = ("global", "speaker")
UNSEEN = ("self", "global")
FORMAT_VERSION = 1


class TokenError(ValueError):
    """Unusable features or thresholds; the message names the utterance or file."""


def level_names(n: int) -> tuple[str, ...]:
    if n not in DEFAULT_LEVELS:
        raise ValueError(f"no default names for {n} levels; choose 2..5 or pass the names explicitly")
    return DEFAULT_LEVELS[n]


class ConceptTokenizer:
    """Fit quantile thresholds on training features; map features to concept levels.

    ``scope="speaker"`` bins each speaker's scores with thresholds from that
    speaker's own utterances (a per-speaker normalisation). A speaker without
    thresholds from training (e.g. a test speaker in a speaker-independent
    split) gets, with ``unseen="self"``, thresholds from its own utterances in
    the batch given to :meth:`transform` (unlabelled test audio, as in
    per-speaker feature normalisation), or with ``unseen="global"`` the global
    training thresholds. Speakers with fewer than ``min_speaker_utts``
    utterances always use the global thresholds.
    """

    def __init__(self, levels: Sequence[str] = ("low", "mid", "high"), scope: str = "global",
                 unseen: str = "self", min_speaker_utts: int = 10,
                 features: Mapping[str, Sequence[tuple[str, int]]] | None = None):
        if len(levels) < 2 or len(set(levels)) != len(levels):
            raise ValueError(f"levels must be at least 2 distinct names, got {list(levels)}")
        for name in levels:
            if "," in name or ":" in name:
                raise ValueError(f"level name {name!r} may not contain ',' or ':' (they separate tokens)")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if unseen not in UNSEEN:
            raise ValueError(f"unseen must be one of {UNSEEN}, got {unseen!r}")
        if min_speaker_utts < len(levels):
            raise ValueError(f"min_speaker_utts ({min_speaker_utts}) must be at least the number of levels")
        self.levels = tuple(levels)
        self.scope = scope
        self.unseen = unseen
        self.min_speaker_utts = int(min_speaker_utts)
        self.features = {c: tuple((str(f), int(s)) for f, s in v) for c, v in (features or TOKEN_FEATURES).items()}
        self.stats: dict[str, tuple[float, float]] = {}       # functional -> (mean, std) on training data
        self.global_thresholds: dict[str, list[float]] = {}   # concept -> n_levels-1 cut points
        self.speaker_thresholds: dict[str, dict[str, list[float]]] = {}
        self.num_train_utts = 0

    @property
    def concepts(self) -> list[str]:
        return list(self.features)

    @property
    def fitted(self) -> bool:
        return bool(self.global_thresholds)

    # ------------------------------------------------------------ scores
    def _columns(self, feats: np.ndarray, feature_names: Sequence[str] | None, utts) -> dict[str, np.ndarray]:
        if feature_names is None:
            from sertk.features.egemaps import feature_names as egemaps_names

            feature_names = egemaps_names()
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != len(feature_names):
            raise TokenError(f"features must be [N, {len(feature_names)}] (one row per utterance), "
                             f"got shape {feats.shape}")
        index = {n: i for i, n in enumerate(feature_names)}
        needed = sorted({f for v in self.features.values() for f, _ in v})
        absent = [f for f in needed if f not in index]
        if absent:
            raise TokenError(f"features lack the functional(s) {absent}; are they eGeMAPSv02 functionals?")
        cols = {f: feats[:, index[f]] for f in needed}
        for f, col in cols.items():
            bad = np.flatnonzero(~np.isfinite(col))
            if bad.size:
                who = [utts[i] for i in bad[:5]] if utts is not None else [int(i) for i in bad[:5]]
                raise TokenError(f"{f} is not finite for {bad.size} utterance(s), e.g. {who}")
        return cols

    def scores(self, feats: np.ndarray, feature_names: Sequence[str] | None = None,
               utts: Sequence[str] | None = None) -> np.ndarray:
        """[N, n_concepts] concept scores: mean of signed, training-z-scored functionals."""
        if not self.stats:
            raise TokenError("tokenizer is not fitted; call fit() or load()")
        cols = self._columns(feats, feature_names, utts)
        out = np.zeros((len(next(iter(cols.values()))), len(self.features)))
        for j, (concept, spec) in enumerate(self.features.items()):
            for f, sign in spec:
                mu, sd = self.stats[f]
                out[:, j] += sign * (cols[f] - mu) / sd
            out[:, j] /= len(spec)
        return out

    def _cuts(self, scores: np.ndarray) -> dict[str, list[float]]:
        qs = np.arange(1, len(self.levels)) / len(self.levels)
        return {c: [float(x) for x in np.quantile(scores[:, j], qs)] for j, c in enumerate(self.features)}

    # ------------------------------------------------------------- fitting
    def fit(self, feats: np.ndarray, speakers: Sequence[str] | None = None,
            feature_names: Sequence[str] | None = None, utts: Sequence[str] | None = None) -> "ConceptTokenizer":
        """Fit z-statistics and thresholds on the training split only."""
        cols = self._columns(feats, feature_names, utts)
        n = len(next(iter(cols.values())))
        if n < len(self.levels):
            raise TokenError(f"{n} training utterance(s) cannot give {len(self.levels)} levels")
        self.stats = {}
        for f, col in cols.items():
            sd = float(col.std())
            self.stats[f] = (float(col.mean()), sd if sd > 1e-12 else 1.0)
        s = self.scores(feats, feature_names, utts)
        self.global_thresholds = self._cuts(s)
        self.speaker_thresholds = {}
        self.num_train_utts = n
        if self.scope == "speaker":
            if speakers is None or len(speakers) != n:
                raise TokenError("scope 'speaker' needs one speaker id per training utterance")
            spk = np.asarray(speakers)
            small = []
            for sp in byte_sorted(set(speakers)):
                idx = spk == sp
                if idx.sum() >= self.min_speaker_utts:
                    self.speaker_thresholds[sp] = self._cuts(s[idx])
                else:
                    small.append(sp)
            if small:
                log.warning("%d training speaker(s) have fewer than %d utterances and use the global "
                            "thresholds: %s", len(small), self.min_speaker_utts, small[:5])
        return self

    # ------------------------------------------------------------ applying
    def _bin(self, scores: np.ndarray, cuts: dict[str, list[float]]) -> list[dict[str, str]]:
        # side="left": a score equal to a cut point goes to the lower level.
        idx = np.stack([np.searchsorted(cuts[c], scores[:, j], side="left")
                        for j, c in enumerate(self.features)], 1)
        return [{c: self.levels[k] for c, k in zip(self.features, row)} for row in idx]

    def transform(self, feats: np.ndarray, speakers: Sequence[str] | None = None,
                  feature_names: Sequence[str] | None = None,
                  utts: Sequence[str] | None = None) -> list[dict[str, str]]:
        """One ``{concept: level}`` dict per row of ``feats``."""
        if not self.fitted:
            raise TokenError("tokenizer is not fitted; call fit() or load()")
        s = self.scores(feats, feature_names, utts)
        out: list[dict[str, str] | None] = [None] * len(s)
        if self.scope == "global":
            return self._bin(s, self.global_thresholds)
        if speakers is None or len(speakers) != len(s):
            raise TokenError("scope 'speaker' needs one speaker id per utterance")
        spk = np.asarray(speakers)
        for sp in byte_sorted(set(speakers)):
            rows = np.flatnonzero(spk == sp)
            if sp in self.speaker_thresholds:
                cuts = self.speaker_thresholds[sp]
            elif self.unseen == "self" and rows.size >= self.min_speaker_utts:
                cuts = self._cuts(s[rows])
            else:
                if self.unseen == "self":
                    log.warning("speaker %s: %d utterance(s) (< %d) for its own thresholds; using the global ones",
                                sp, rows.size, self.min_speaker_utts)
                cuts = self.global_thresholds
            for r, tok in zip(rows, self._bin(s[rows], cuts)):
                out[r] = tok
        return out  # type: ignore[return-value]

    # -------------------------------------------------------------- storage
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "levels": list(self.levels), "scope": self.scope,
                "unseen": self.unseen, "min_speaker_utts": self.min_speaker_utts,
                # a list, not a mapping: JSON files are written with sorted keys, the concept order matters
                "features": [{"concept": c, "functionals": [[f, s] for f, s in v]} for c, v in self.features.items()],
                "feature_stats": {f: list(v) for f, v in self.stats.items()},
                "thresholds": {"global": self.global_thresholds, "speakers": self.speaker_thresholds},
                "num_train_utts": self.num_train_utts}

    @classmethod
    def from_dict(cls, d: dict, where: str = "thresholds") -> "ConceptTokenizer":
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise TokenError(f"{where}: format_version {d.get('format_version')!r}, expected {FORMAT_VERSION}")
            features = {e["concept"]: [(f, s) for f, s in e["functionals"]] for e in d["features"]}
            tok = cls(d["levels"], d["scope"], d["unseen"], d["min_speaker_utts"], features)
            tok.stats = {f: (float(m), float(s)) for f, (m, s) in d["feature_stats"].items()}
            tok.global_thresholds = {c: [float(x) for x in v] for c, v in d["thresholds"]["global"].items()}
            tok.speaker_thresholds = {sp: {c: [float(x) for x in v] for c, v in cuts.items()}
                                      for sp, cuts in d["thresholds"]["speakers"].items()}
            tok.num_train_utts = int(d["num_train_utts"])
        except (KeyError, TypeError, ValueError) as e:
            raise TokenError(f"{where}: malformed concept-token thresholds ({e!r})") from e
        n_cuts = len(tok.levels) - 1
        for c in tok.features:
            for owner, cuts in [("global", tok.global_thresholds)] + list(tok.speaker_thresholds.items()):
                if len(cuts.get(c, [])) != n_cuts:
                    raise TokenError(f"{where}: {owner} thresholds of {c!r} need {n_cuts} values")
        return tok

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ConceptTokenizer":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenError(f"{path}: cannot read concept-token thresholds: {e}") from e
        return cls.from_dict(d, str(path))


# ------------------------------------------------------------------ text form
def render(tokens: Mapping[str, str]) -> str:
    """``energy: high, pitch: mid, ...`` in the order of the dict (CONCEPTS order from the tokenizer)."""
    return ", ".join(f"{c}: {lvl}" for c, lvl in tokens.items())


def parse(text: str) -> dict[str, str]:
    """Inverse of :func:`render`."""
    out = {}
    for item in text.split(","):
        concept, sep, level = item.partition(":")
        if not sep or not concept.strip() or not level.strip():
            raise TokenError(f"expected 'concept: level, ...', got {text!r}")
        out[concept.strip()] = level.strip()
    return out


def write_utt2tokens(path: str | Path, tokens: Mapping[str, Mapping[str, str]]) -> None:
    """Kaldi-style table ``utt energy: high, pitch: mid, ...`` (byte-sorted)."""
    write_text_atomic(path, "".join(f"{u} {render(tokens[u])}\n" for u in byte_sorted(tokens)))


def read_utt2tokens(path: str | Path) -> dict[str, dict[str, str]]:
    table = read_table(Path(path), min_fields=2)
    out = {}
    for u, text in table.items():
        try:
            out[u] = parse(text)
        except TokenError as e:
            raise TokenError(f"{path}: utterance {u}: {e}") from e
    return out


# -------------------------------------------------------------- perturbations
def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation with no fixed point: row i takes the tokens of row perm[i] != i."""
    if n < 2:
        raise ValueError(f"shuffling needs at least 2 utterances, got {n}")
    rng = np.random.default_rng(seed)
    while True:  # about e tries on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def shuffle_tokens(tokens: Sequence[Mapping[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Shuffled condition: every utterance gets the tokens of another utterance."""
    perm = derangement(len(tokens), seed)
    return [dict(tokens[j]) for j in perm]


def conflict_tokens(tokens: Sequence[Mapping[str, str]], levels: Sequence[str] = ("low", "mid", "high"),
                    seed: int = 0) -> list[dict[str, str]]:
    """Conflicting condition: every slot gets a level that contradicts the audio.

    Levels are mirrored (low <-> high, very low <-> very high). The middle
    level of an odd scale has no mirror, and keeping it would leave about a
    third of the slots agreeing with the audio; it moves to the lowest or the
    highest level instead, drawn per slot (seeded). So every slot of every
    utterance differs from its aligned level.
    """
    levels = list(levels)
    n = len(levels)
    rng = np.random.default_rng(seed)
    out = []
    for tok in tokens:
        new = {}
        for c, lvl in tok.items():
            if lvl not in levels:
                raise TokenError(f"level {lvl!r} of {c!r} is not one of {levels}")
            k = n - 1 - levels.index(lvl)
            if n % 2 == 1 and k == n // 2:
                k = int(rng.choice([0, n - 1]))
            new[c] = levels[k]
        out.append(new)
    return out


def changed_figures(perturbed: Sequence[Mapping[str, str]], aligned: Sequence[Mapping[str, str]]) -> dict[str, float]:
    """How much a condition changed the tokens: ``utterances_changed``, the share of utterances with any
    token differing from aligned, and ``slots_changed``, the share of (utterance, concept) slots that differ."""
    if len(perturbed) != len(aligned) or not aligned:
        raise ValueError(f"{len(perturbed)} perturbed token rows for {len(aligned)} aligned ones")
    slots = [[p.get(c) != lvl for c, lvl in a.items()] for p, a in zip(perturbed, aligned)]
    return {"utterances_changed": float(np.mean([any(s) for s in slots])),
            "slots_changed": float(np.mean([x for s in slots for x in s]))}


def corrupt_tokens(tokens: Sequence[Mapping[str, str]], seed: int = 0,
                   levels: Sequence[str] = ("low", "mid", "high")) -> list[dict[str, str]]:
    """Corrupted condition: every level drawn uniformly at random (seeded), ignoring the audio."""
    rng = np.random.default_rng(seed)
    levels = list(levels)
    return [{c: levels[int(rng.integers(len(levels)))] for c in tok} for tok in tokens]


def permute_slots(tokens: Sequence[Mapping[str, str]], seed: int = 0) -> list[dict[str, str]]:
    """Permuted condition: each utterance's own levels moved across its concept slots.

    Every utterance gets a random derangement of its slots (seeded), so no
    concept keeps its own level's position; the utterance's multiset of levels
    stays, only which concept carries which level changes (a level can still land
    on its own concept when two slots share it).
    """
    rng = np.random.default_rng(seed)
    out = []
    for tok in tokens:
        concepts = list(tok)
        perm = derangement(len(concepts), int(rng.integers(2**31)))
        out.append({c: tok[concepts[j]] for c, j in zip(concepts, perm)})
    return out


# Levels that mean nothing on any acoustic scale: the "corrupted with nonsense values" control.
NONSENSE_LEVELS = ("purple", "seven", "banana", "upside-down", "cloudy", "zebra")


def nonsense_tokens(tokens: Sequence[Mapping[str, str]], seed: int = 0,
                    values: Sequence[str] = NONSENSE_LEVELS) -> list[dict[str, str]]:
    """Corrupted-nonsense condition: every level replaced by a meaningless word drawn at random (seeded)."""
    rng = np.random.default_rng(seed)
    values = list(values)
    return [{c: values[int(rng.integers(len(values)))] for c in tok} for tok in tokens]


# ------------------------------------------------------------------ data dirs
def datadir_feats(datadir: str | Path, feats: str | Path) -> tuple[DataDir, list[str], np.ndarray, list[str]]:
    """(data dir, utterances, [N, 88] features, feature names) for a data dir and its eGeMAPS store."""
    from sertk.features.egemaps import read_feature_names
    from sertk.features.store import feats_matrix, scp_path_of

    d = DataDir.read(datadir)
    utts = d.utts
    scp = scp_path_of(feats)
    return d, utts, feats_matrix(scp, utts), read_feature_names(scp.parent)


def fit_on_datadir(datadir: str | Path, feats: str | Path, **options) -> ConceptTokenizer:
    """Fit a tokenizer on a training data dir and its eGeMAPS store (``options``: ConceptTokenizer args)."""
    d, utts, x, names = datadir_feats(datadir, feats)
    return ConceptTokenizer(**options).fit(x, [d.utt2spk[u] for u in utts], names, utts)


def tokenize_datadir(tokenizer: ConceptTokenizer, datadir: str | Path, feats: str | Path) -> dict[str, dict[str, str]]:
    """utt -> {concept: level} for every utterance of a data dir."""
    d, utts, x, names = datadir_feats(datadir, feats)
    return dict(zip(utts, tokenizer.transform(x, [d.utt2spk[u] for u in utts], names, utts)))
