"""MSP-Podcast recipe: labels_consensus.csv, official partitions, categorical and dimensional sets."""
from pathlib import Path

from fixtures_corpora import REPO, make_msp_podcast, read_skipped, read_table, run_prepare, write_csv
from sertk.common.protocol import load_protocols
from sertk.data.datadir import DataDir
from sertk.data.validate import check_speaker_disjoint

RECIPE = REPO / "egs" / "msp_podcast"
ARGS = ("--protocols", "conf/protocols.yaml", "--optional-protocols", "conf/protocols_test3.yaml")
PART_SETS = {"Train": "train", "Development": "development", "Test1": "test1", "Test2": "test2"}


def test_partitions_labels_and_avd(tmp_path):
    info = make_msp_podcast(tmp_path / "db")
    r = run_prepare("msp_podcast", tmp_path / "db", tmp_path / "data", *ARGS)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    dd = DataDir.read(data / "all")
    assert len(dd) == info["n"]
    by_stem = {Path(w).stem: u for u, w in dd.tables["wav.scp"].items()}
    for name, emo, act, val, dom, spk, gender, part in info["rows"]:
        u = by_stem[Path(name).stem]
        assert dd.utt2emo[u] == emo
        assert dd.utt2avd[u] == (float(act), float(val), float(dom))   # arousal, valence, dominance (1-7)
        assert dd.field("utt2gender")[u] == {"Male": "m", "Female": "f", "Unknown": "u"}[gender]
        assert read_table(data / "all" / "utt2partition")[u] == part
        assert u in DataDir.read(data / PART_SETS[part]).utts          # dimensional set: every segment
        in_cat = u in DataDir.read(data / f"{PART_SETS[part]}_cat8").utts
        assert in_cat == (emo not in ("O", "X"))                     # categorical set: 8 classes only
    unknown = [u for u in dd.utts if "unk_" in dd.utt2spk[u]]
    assert len(unknown) == 4 and len({dd.utt2spk[u] for u in unknown}) == 4   # one speaker per unknown segment
    for split in load_protocols(RECIPE / "conf" / "protocols.yaml"):
        roles = {"train": data / split.train, "dev": data / split.dev}
        roles.update({t: data / t for t in split.tests})
        assert check_speaker_disjoint(roles) == []
    skipped = read_skipped(data)
    for kind, what in info["skipped"].items():
        hits = [v for k, v in skipped.items() if Path(str(what)).stem in k and v.startswith(kind)]
        assert hits, (kind, what, skipped)
    assert not (data / "test3").exists()                              # no Test3 rows: optional sets skipped
    assert "skipped (optional)" in (data / "local" / "prepare.log").read_text()


def test_test3_sets_when_present(tmp_path):
    make_msp_podcast(tmp_path / "db", with_test3=True)
    assert run_prepare("msp_podcast", tmp_path / "db", tmp_path / "data", *ARGS).returncode == 0
    parts = read_table(tmp_path / "data" / "test3" / "utt2partition")
    assert set(parts.values()) == {"Test3"} and len(parts) == 4


def test_missing_column_is_named(tmp_path):
    make_msp_podcast(tmp_path / "db")
    write_csv(tmp_path / "db" / "Labels" / "labels_consensus.csv", ["FileName", "EmoClass"], [["a.wav", "N"]])
    r = run_prepare("msp_podcast", tmp_path / "db", tmp_path / "data", *ARGS)
    assert r.returncode == 1 and "missing column(s) ['EmoAct', 'EmoVal', 'EmoDom', 'SpkrID'" in r.stderr
