"""FAU Aibo recipe: chunk label files, 5-class and 2-class protocols, Ohm train / Mont test."""
from pathlib import Path

from fixtures_corpora import make_fau_aibo, read_skipped, read_table, run_prepare
from sertk.data.datadir import DataDir


def test_chunks_labels_and_schools(tmp_path):
    info = make_fau_aibo(tmp_path / "db")
    r = run_prepare("fau_aibo", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    dd = DataDir.read(data / "all")
    assert len(dd) == info["n"]
    for chunk, lab in info["five"].items():
        u = f"aibo-{chunk}"
        assert dd.utt2emo[u] == lab and dd.utt2spk[u] == "aibo-" + "_".join(chunk.split("_")[:2])
    for task, truth in (("5cl", info["five"]), ("2cl", info["two"])):
        train, test = DataDir.read(data / f"train_{task}"), DataDir.read(data / f"test_{task}")
        assert {u.split("-", 1)[1].split("_")[0] for u in train.utts} == {"Ohm"}
        assert {u.split("-", 1)[1].split("_")[0] for u in test.utts} == {"Mont"}
        for d in (train, test):                                   # label_from picks the task's labels
            assert all(d.utt2emo[u] == truth[u.split("-", 1)[1]] for u in d.utts)
        assert len(train) + len(test) == info["n"]
    assert read_table(data / "all" / "utt2confidence_5cl")["aibo-Ohm_01_000_00"] == "0.600000"
    skipped = read_skipped(data)
    for kind, path in info["skipped"].items():
        rel = Path(path).relative_to(tmp_path / "db").as_posix()
        assert skipped.get(rel, "").startswith(kind), (rel, skipped)
    assert not any("chunk_labels" in k for k in skipped)          # label files are read, not skipped


def test_malformed_label_line_is_named(tmp_path):
    make_fau_aibo(tmp_path / "db")
    f = tmp_path / "db" / "labels" / "IS2009EmotionChallenge" / "chunk_labels_5cl_corpus.txt"
    lines = f.read_text().splitlines()
    chunk, _, conf = lines[2].split()
    lines[2] = f"{chunk} X {conf}"
    f.write_text("\n".join(lines) + "\n")
    r = run_prepare("fau_aibo", tmp_path / "db", tmp_path / "data")
    assert r.returncode == 1 and "chunk_labels_5cl_corpus.txt:3: class 'X' is not one of A E N P R" in r.stderr
