"""EmoDB recipe: file-name fields, leave-one-speaker-out folds, speaker-pair folds with a dev pair, 4-class sets."""
from pathlib import Path

from fixtures_corpora import EMODB_SPEAKERS, REPO, make_emodb, read_skipped, read_table, run_prepare
from sertk.common.protocol import load_protocols
from sertk.data.datadir import DataDir


def test_fields_and_loso_folds(tmp_path):
    info = make_emodb(tmp_path / "db")
    r = run_prepare("emodb", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    dd = DataDir.read(data / "all")
    assert len(dd) == info["n"]
    u = "emodb-03-03a01Wa"
    assert dd.utt2emo[u] == "W" and dd.utt2spk[u] == "emodb-03" and dd.field("utt2gender")[u] == "m"
    assert dd.field("utt2gender")["emodb-08-08a01Wa"] == "f"
    assert dd.field("text")["emodb-13-13b01Tb"] == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert read_table(data / "all" / "utt2version")["emodb-13-13b01Tb"] == "b"
    splits = load_protocols(REPO / "egs" / "emodb" / "conf" / "protocols.yaml")
    loso = [s for s in splits if s.protocol == "loso"]
    assert len(loso) == 10
    for split, spk in zip(loso, EMODB_SPEAKERS):
        test, train = DataDir.read(data / split.tests[0]), DataDir.read(data / split.train)
        assert set(test.utt2spk.values()) == {f"emodb-{spk}"}
        assert f"emodb-{spk}" not in set(train.utt2spk.values()) and len(train.spk2utt) == 9
    # spk5: every speaker tested once, each fold's test and dev pairs one male and one female speaker, the
    # other six train; spk5_4cl: the same speakers, only the four classes the zoo ALM knows
    gender = dd.field("utt2gender")
    tested = []
    for proto, classes in (("spk5", {"W", "L", "E", "A", "F", "T", "N"}), ("spk5_4cl", {"W", "F", "N", "T"})):
        folds = [s for s in splits if s.protocol == proto]
        assert len(folds) == 5
        for split in folds:
            sets = {role: DataDir.read(data / name) for role, name in
                    (("train", split.train), ("dev", split.dev), ("test", split.tests[0]))}
            spk = {role: set(d.utt2spk.values()) for role, d in sets.items()}
            assert len(spk["test"]) == len(spk["dev"]) == 2 and len(spk["train"]) == 6
            assert not (spk["test"] & spk["dev"]) and not ((spk["test"] | spk["dev"]) & spk["train"])
            for role in ("test", "dev"):
                assert sorted(gender[next(iter(sets[role].spk2utt[s]))] for s in spk[role]) == ["f", "m"]
            assert set().union(*(set(d.utt2emo.values()) for d in sets.values())) <= classes
            if proto == "spk5":
                tested += sorted(spk["test"])
    assert sorted(tested) == sorted(f"emodb-{s}" for s in EMODB_SPEAKERS)
    skipped = read_skipped(data)
    for kind, path in info["skipped"].items():
        rel = Path(path).relative_to(tmp_path / "db").as_posix()
        assert skipped.get(rel, "").startswith(kind), (rel, skipped)
    warnings = (data / "local" / "warnings.txt").read_text()
    assert "EmoDB utterances per emotion: found 40, the full corpus has 535" in warnings
