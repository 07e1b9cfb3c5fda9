"""Label words, not corpus codes: what a language model reads for each class of a label map."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sertk.data.labels import LabelError, LabelMap

EGS = Path(__file__).resolve().parents[1] / "egs"


def test_corpus_codes_read_as_their_canonical_words(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("name: cremad6\nlabels: [ANG, DIS, FEA, HAP, NEU, SAD]\n")
    lm = LabelMap.load(path)
    assert lm.words == ["angry", "disgusted", "fearful", "happy", "neutral", "sad"]
    assert lm.labels == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]  # results keep the corpus's codes
    assert LabelMap(["ang", "hap", "neu", "sad"], {"exc": "hap"}).word("exc") == "happy"
    assert LabelMap(["neutral", "calm", "disgust", "Bored"]).words == ["neutral", "calm", "disgusted", "bored"]


def test_a_single_letter_code_needs_the_map_to_give_its_word(tmp_path):
    bare = LabelMap(["A", "N"], name="msp")
    with pytest.raises(LabelError, match="class 'A' is a code with no word.*words: {A: <word>}"):
        bare.words
    path = tmp_path / "labels.yaml"
    path.write_text("name: msp\nlabels: [A, N]\nwords: {A: angry, N: neutral}\n")
    lm = LabelMap.load(path)
    assert lm.words == ["angry", "neutral"]
    assert LabelMap.from_dict(lm.to_dict()).words == ["angry", "neutral"]
    with pytest.raises(LabelError, match=r"words given for \['X'\]"):
        LabelMap(["A", "N"], words={"X": "angry"})
    with pytest.raises(LabelError, match="class 'fru'"):  # a short code is not taken for a word
        LabelMap(["ang", "fru"]).words


def _icl_label_maps():
    for cfg_path in sorted(EGS.glob("*/conf/icl.yaml")):
        conf = cfg_path.parent
        cfg = yaml.safe_load(cfg_path.read_text())
        protocols = yaml.safe_load((conf / "protocols.yaml").read_text())
        names = cfg.get("protocols") or list(protocols["protocols"])
        for name in names:
            rel = cfg.get("label_map") or protocols["protocols"][name].get("label_map") or protocols["label_map"]
            yield f"{cfg_path.parent.parent.name}/{name}", conf / rel


@pytest.mark.parametrize("where,path", list(_icl_label_maps()))
def test_every_icl_recipe_gives_the_lm_words(where, path):
    words = LabelMap.load(path).words
    assert all(w.islower() and w.isalpha() and len(w) > 2 for w in words), (where, words)
