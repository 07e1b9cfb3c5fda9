"""Episodes for in-context personalisation: k enrolment utterances and a query, all of one speaker.

An episode never mixes speakers and never holds its query in its enrolment:
that is what makes an accuracy gain with k a gain from *personalisation*
(the model saw this speaker), not from seeing the query's label.

* Meta-training (:class:`EpisodeSampler`): for each episode a speaker, a k from
  the configured list, k enrolment utterances and one query of that speaker,
  drawn uniformly, labels as they come (many episodes miss some classes, as
  the ICL paper's "arbitrary labels" setting wants). With ``diverse`` the
  enrolment covers as many emotions as k and the speaker allow (the paper:
  meta-training on enrolment that expresses various emotions helps ICL
  personalisation). The draw is a function of ``(seed, epoch, index)`` only,
  so a resumed or DDP run sees the same episodes.
* Evaluation (:func:`enrolment_draws`): for one test speaker and k, several
  seeded draws of enrolment; the speaker's other utterances are the queries.
  ``arbitrary`` draws uniformly; ``cover`` draws sets holding every class
  (one of each, the rest uniform), possible only when k >= number of classes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

CONDITIONS = ("arbitrary", "cover")


@dataclass(frozen=True)
class Episode:
    speaker: str
    enrol: tuple[str, ...]
    query: str

    def __post_init__(self):
        if self.query in self.enrol:
            raise ValueError(f"episode of {self.speaker}: query {self.query} is in its own enrolment")


def group_by_speaker(utts: list[str], utt2spk: dict[str, str]) -> dict[str, list[str]]:
    """Speaker -> their utterances (sorted), speakers in sorted order."""
    out: dict[str, list[str]] = {}
    for u in sorted(utts):
        out.setdefault(utt2spk[u], []).append(u)
    return dict(sorted(out.items()))


def stable_seed(*parts) -> int:
    """A seed from strings and ints that does not depend on Python's hash randomisation."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def diverse_possible(speakers: dict[str, list[str]], labels: dict) -> bool:
    """The ``diverse: auto`` rule: on when some training speaker has >= 3 utterances of >= 2 classes.

    That is the least that leaves room for a query and a two-emotion enrolment;
    a speaker without it gets what an arbitrary draw would give.
    """
    return any(len(us) >= 3 and len({labels[u] for u in us}) >= 2 for us in speakers.values())


class EpisodeSampler:
    """Meta-training episodes over ``speakers`` (speaker -> utterances), ``k`` from ``ks``.

    A k larger than a speaker's utterances minus one (one is the query) is
    capped for that speaker; speakers with a single utterance cannot give an
    episode and are refused. ``diverse`` (needs ``labels``, utt -> class) draws
    the query uniformly, then an enrolment holding min(k, classes among the
    speaker's other utterances) distinct classes (:meth:`_diverse`).
    """

    def __init__(self, speakers: dict[str, list[str]], ks: list[int], seed: int = 0, diverse: bool = False,
                 labels: dict | None = None):
        if not speakers:
            raise ValueError("EpisodeSampler: no speakers")
        small = [s for s, us in speakers.items() if len(us) < 2]
        if small:
            raise ValueError(f"EpisodeSampler: speaker(s) {small[:5]} have fewer than 2 utterances: no episode "
                             "has room for enrolment and a query")
        if not ks or min(ks) < 0:
            raise ValueError(f"EpisodeSampler: k values must be >= 0, got {ks}")
        self.speakers = {s: sorted(us) for s, us in sorted(speakers.items())}
        self.names = list(self.speakers)
        self.ks = [int(k) for k in ks]
        self.seed = int(seed)
        if diverse and labels is None:
            raise ValueError("EpisodeSampler: diverse enrolment needs the utterances' labels")
        self.diverse = bool(diverse)
        self.labels = {u: labels[u] for us in self.speakers.values() for u in us} if diverse else None

    def episodes(self, n: int, epoch: int = 0) -> list[Episode]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, stable_seed("episodes"), int(epoch)])
        out = []
        for _ in range(n):
            spk = self.names[int(rng.integers(len(self.names)))]
            utts = self.speakers[spk]
            k = min(self.ks[int(rng.integers(len(self.ks)))], len(utts) - 1)
            if self.diverse:
                out.append(self._diverse(rng, spk, utts, k))
                continue
            pick = rng.choice(len(utts), size=k + 1, replace=False)
            out.append(Episode(spk, tuple(utts[i] for i in pick[:k]), utts[int(pick[k])]))
        return out

    def _diverse(self, rng: np.random.Generator, spk: str, utts: list[str], k: int) -> Episode:
        """Query uniform; in a random order of the rest, the first utterance of each class until
        min(k, classes) are in, then the next ones: frequent classes come first more often, as in
        an arbitrary draw, but no class repeats while another is missing."""
        q = int(rng.integers(len(utts)))
        order = [int(i) for i in rng.permutation([i for i in range(len(utts)) if i != q])]
        first: dict = {}
        for i in order:
            first.setdefault(self.labels[utts[i]], i)
        pick = list(first.values())[:k]
        taken = set(pick)
        pick += [i for i in order if i not in taken][:k - len(pick)]
        pick = [pick[i] for i in rng.permutation(len(pick))]  # class order must not leak
        return Episode(spk, tuple(utts[i] for i in pick), utts[q])


def enrolment_draws(utts: list[str], labels: list[str], k: int, draws: int, seed: int,
                    condition: str = "arbitrary", speaker: str = "") -> list[tuple[list[str], list[str]]]:
    """``draws`` seeded (enrolment, queries) pairs of one speaker's utterances; [] when impossible.

    Impossible: fewer than k + 1 utterances, or ``cover`` with k below the
    number of classes the speaker has (or a class of ``labels`` it lacks).
    The draw of (speaker, k, condition, d) is the same whatever else is drawn.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    order = sorted(range(len(utts)), key=lambda i: utts[i])
    utts, labels = [utts[i] for i in order], [labels[i] for i in order]
    classes = sorted(set(labels))
    if len(utts) < k + 1 or (condition == "cover" and k < len(classes)):
        return []
    out = []
    for d in range(draws):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, stable_seed(speaker, k, condition, d)])
        if condition == "arbitrary":
            pick = [int(i) for i in rng.choice(len(utts), size=k, replace=False)]
        else:
            pick = [int(rng.choice([i for i, y in enumerate(labels) if y == c])) for c in classes]
            rest = [i for i in range(len(utts)) if i not in pick]
            pick += [int(i) for i in rng.choice(rest, size=k - len(pick), replace=False)]
            pick = [pick[i] for i in rng.permutation(len(pick))]  # class order must not leak
        chosen = set(pick)
        out.append(([utts[i] for i in pick], [u for i, u in enumerate(utts) if i not in chosen]))
    return out
