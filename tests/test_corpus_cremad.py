"""CREMA-D recipe: file names, demographics and vote table, intended vs perceived protocols."""
import importlib.util
from pathlib import Path

import pytest

from fixtures_corpora import REPO, cremad_split_actors, make_cremad, read_skipped, read_table, run_prepare, write_csv
from sertk.common.protocol import load_protocols
from sertk.data.corpus_prep import read_split_list
from sertk.data.datadir import DataDir
from sertk.data.validate import check_speaker_disjoint

RECIPE = REPO / "egs" / "cremad"
BOTH = ("--protocols", "conf/protocols.yaml", "conf/protocols_perceived.yaml")


def _module():
    spec = importlib.util.spec_from_file_location("cremad_prepare", RECIPE / "local" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad")
    actors = cremad_split_actors()
    info = make_cremad(root / "db", actors)
    r = run_prepare("cremad", root / "db", root / "data", *BOTH)
    assert r.returncode == 0, r.stderr
    return root, info, actors


def test_labels_gender_and_skipped_files(prepared):
    root, info, actors = prepared
    dd = DataDir.read(root / "data" / "all")
    assert len(dd) == info["n"]
    a = next(iter(actors))
    u = f"cremad-{a}-DFA_ANG_XX"
    assert dd.utt2emo[u] == "ANG" and dd.utt2spk[u] == f"cremad-{a}"
    assert dd.field("utt2gender")[u] == actors[a][0].lower()
    assert dd.field("text")[u] == "Don't forget a jacket"
    perceived = read_table(root / "data" / "all" / "utt2perceived")
    assert perceived[f"cremad-{a}-IEO_ANG_LO"] == "tie"          # VoiceVote "A:D"
    assert perceived[f"cremad-{a}-TIE_NEU_XX"] == "SAD"          # raters heard sadness
    assert read_table(root / "data" / "all" / "utt2level")[f"cremad-{a}-IEO_HAP_HI"] == "HI"
    skipped = read_skipped(root / "data")
    for kind, path in info["skipped"].items():
        rel = Path(path).relative_to(root / "db").as_posix()
        assert skipped.get(rel, "").startswith(kind), (rel, skipped.get(rel))


def test_intended_and_perceived_protocols(prepared):
    root, info, actors = prepared
    data = root / "data"
    for conf in ("protocols.yaml", "protocols_perceived.yaml"):
        for split in load_protocols(RECIPE / "conf" / conf):
            assert check_speaker_disjoint({"train": data / split.train, "dev": data / split.dev,
                                           "test": data / split.tests[0]}) == []
    a = next(iter(actors))
    train = DataDir.read(data / "train")
    train_p = DataDir.read(data / "train_perceived")
    assert f"cremad-{a}" in train.spk2utt                       # train actors come first
    assert train.utt2emo[f"cremad-{a}-TIE_NEU_XX"] == "NEU"
    assert train_p.utt2emo[f"cremad-{a}-TIE_NEU_XX"] == "SAD"
    assert f"cremad-{a}-IEO_ANG_LO" in train.utts and f"cremad-{a}-IEO_ANG_LO" not in train_p.utts
    n_all = sum(len(DataDir.read(data / s)) for s in ("train", "dev", "test"))
    n_p = sum(len(DataDir.read(data / s)) for s in ("train_perceived", "dev_perceived", "test_perceived"))
    assert n_all == info["n"] and n_p == info["n"] - len(actors)   # one tie per actor left out


def test_committed_split_is_stratified_and_reproducible(tmp_path):
    mod = _module()
    mod.SPLIT_FILE = tmp_path / "split.txt"
    mod.write_splits(None)
    committed = RECIPE / "conf" / "splits" / "cremad_speaker_70_10_20.txt"
    assert (tmp_path / "split.txt").read_bytes() == committed.read_bytes()
    sl = read_split_list(committed)
    parts = {p: [s.split("-")[1] for s in sl.sets[p]] for p in ("train", "dev", "test")}
    assert sorted(sum(parts.values(), [])) == [str(a) for a in range(1001, 1092)]
    assert len(mod.MALE_ACTORS) == 48
    for p, actors in parts.items():                 # sex ratio of each part close to 48/91
        share = sum(a in mod.MALE_ACTORS for a in actors) / len(actors)
        assert abs(share - 48 / 91) < 0.1, (p, share)
    assert [len(parts[p]) for p in ("train", "dev", "test")] == [63, 9, 19]


def test_bad_vote_table_header_is_named(tmp_path):
    make_cremad(tmp_path / "db", {"1001": "Male", "1002": "Female"})
    write_csv(tmp_path / "db" / "processedResults" / "summaryTable.csv", ["", "File", "Vote"], [["1", "x", "A"]])
    r = run_prepare("cremad", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 1
    assert "summaryTable.csv: missing column(s) ['FileName', 'VoiceVote']" in r.stderr
