"""zoo/dawn: the stand-in for the released Dawn A/D/V teacher (audeering/wav2vec2-large-robust-12-ft-
emotion-msp-dim), built from the mini_emo zoo config (shrunken) on a tiny pool, loaded as real recipes load
the release: an offline teacher config resolves to it and sertk.models.dawn.load_released loads it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sertk.common.config import load_config
from sertk.common.stand_ins import substitute
from sertk.data.dataset import AudioDataset
from sertk.data.synth import generate_corpus
from sertk.eval.metrics import regression_metrics
from sertk.models.dawn import AVD_OUTPUTS, DAWN_OUTPUTS, RELEASED, DawnRegressor, EnsembleTeacher, load_released
from sertk.tasks.teacher import build_member
from sertk.train.inference import predict
from sertk.zoo import build_zoo, check_zoo_config
from sertk.zoo.pool import Pool
from zoo_fixtures import RECIPE_ZOO, tiny_zoo

ROOT = Path(__file__).resolve().parent.parent
DEV_SPEAKERS = 2


@pytest.fixture(scope="module")
def dawn_zoo(tmp_path_factory):
    """``--only dawn`` on an empty zoo: zoo/whisper_tiny_en (the real import) first, then the stand-in, with the
    shrunken entry trained a little longer (a few seconds) so that it learns the pool's A/V/D."""
    root = tmp_path_factory.mktemp("dawn")
    synth = load_config(ROOT / "egs/mini_emo/conf/synth.yaml", ["pretrain.speakers=8", "pretrain.utts_per_speaker=12"])
    generate_corpus(synth, root / "audio", root / "data", nj=1, part="pretrain")
    cfg = tiny_zoo()
    entry = cfg["models"]["dawn"]
    entry["data"].update(dev_speakers=DEV_SPEAKERS)
    entry["train"].update(epochs=6, batch_size=4, lr=1e-4, warmup_steps=8)
    built = build_zoo(cfg, root / "data/pretrain", root / "zoo", only=["dawn"])
    return cfg, root, built


def _dev_set(root: Path) -> AudioDataset:
    pool = Pool.load(root / "data/pretrain")
    _, dev = pool.split(DEV_SPEAKERS)  # the speakers the build held out
    pool.datadir.subset(dev).write(root / "dev")
    return AudioDataset(root / "dev", 16000, targets=("avd",), max_duration=2.0)


def _avd(model: DawnRegressor, ds: AudioDataset) -> tuple[np.ndarray, np.ndarray]:
    """(outputs in sertk's A/V/D order, as the teacher task runs the model; gold A/V/D)."""
    utts, out = predict(EnsembleTeacher([model]).eval(), ds, batch_size=8, amp=False)
    return out, np.array([ds.datadir.utt2avd[u] for u in utts])


def test_recipe_entry_is_valid_and_builds_after_the_whisper_it_starts_from(dawn_zoo):
    cfg, root, built = dawn_zoo
    check_zoo_config(yaml.safe_load(RECIPE_ZOO.read_text()))
    assert list(built) == ["whisper_tiny_en", "dawn"]  # the backbone was missing: built first
    bad = yaml.safe_load(RECIPE_ZOO.read_text())
    del bad["models"]["dawn"]["backbone"]["init"]
    with pytest.raises(ValueError, match="models.dawn: backbone.init"):
        check_zoo_config(bad)
    assert build_zoo(cfg, root / "data/pretrain", root / "zoo", only=["dawn"]) == {}  # up to date: skipped


def test_load_released_loads_it_and_its_outputs_track_the_pool_avd(dawn_zoo):
    """The user's contract: the release's loader, three outputs per clip in the release's order and 0-1 scale,
    following the held-out pool speakers' A/V/D far better than the same architecture untrained."""
    _, root, _ = dawn_zoo
    model = load_released(root / "zoo/dawn")
    assert isinstance(model, DawnRegressor) and not model.training
    assert type(model.wav2vec2).__name__ == "WhisperSpeechEncoder" and model.wav2vec2.window == "clip"
    ds = _dev_set(root)
    out, gold = _avd(model, ds)
    assert out.shape == (len(ds), 3) and np.isfinite(out).all()
    trained = regression_metrics(out, gold, list(AVD_OUTPUTS))
    torch.manual_seed(0)
    fresh = DawnRegressor.from_spec({"name_or_path": str(root / "zoo/whisper_tiny_en")}).eval()
    untrained = regression_metrics(_avd(fresh, ds)[0], gold, list(AVD_OUTPUTS))
    # arousal (and with it dominance) is what a few seconds of training on 72 clips learns; valence needs more
    assert trained["pearson"]["arousal"] > 0.45 and trained["ccc"]["arousal"] > 0.35, trained
    assert trained["ccc_mean"] > untrained["ccc_mean"] + 0.2, (trained, untrained)
    # the release's scale: arousal on 0-1 like the gold labels (a CCC-trained output matches their mean)
    assert abs(out[:, 0].mean() - gold[:, 0].mean()) < 0.2 and -0.5 < out[:, 0].min() and out[:, 0].max() < 1.5
    # the release's order: forward is (arousal, dominance, valence), avd() reorders; the card records both
    wav = ds[0]["wav"][None]
    with torch.no_grad():
        assert torch.equal(model(wav)[:, [0, 2, 1]], model.avd(wav))
    card = json.loads((root / "zoo/dawn/zoo.json").read_text())
    assert card["outputs"] == list(DAWN_OUTPUTS) and card["output_scale"] == "0-1"
    # the card's dev figures are the loaded checkpoint's on these speakers
    assert card["dev"]["utterances"] == len(ds) and card["dev"]["round_trip_max_diff"] <= 1e-4
    assert card["dev"]["ccc_arousal"] == pytest.approx(trained["ccc"]["arousal"], abs=0.02)


def test_an_offline_teacher_config_resolves_the_release_to_it_and_the_card_says_what_it_is(dawn_zoo):
    _, root, _ = dawn_zoo
    card = json.loads((root / "zoo/dawn/zoo.json").read_text())
    assert card["stands_in_for"] == RELEASED == "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
    assert card["backbone"] == "zoo/whisper_tiny_en" and card["pool"]["speakers"] == 8
    readme = (root / "zoo/dawn/README.md").read_text()
    assert RELEASED in readme and "not the released model" in readme and "synthetic" in readme
    assert f"({card['dev']['ccc_mean']})" in readme
    for recipe in ("iemocap", "msp_podcast"):  # what ./run.sh --zoo does to the teacher config of stage 7
        cfg = yaml.safe_load((ROOT / f"egs/{recipe}/conf/teacher.yaml").read_text())
        out, done = substitute(cfg, root / "zoo", f"{recipe}/conf/teacher.yaml")
        assert out["members"][0]["pretrained"] == str((root / "zoo/dawn").resolve())
        assert done["members[0].pretrained"]["zoo_model"] == "dawn"
    member = build_member(out["members"][0])  # the teacher task's own loading path
    wav = torch.zeros(1, 16000).uniform_(-0.1, 0.1)
    with torch.no_grad():
        assert torch.equal(member(wav), load_released(root / "zoo/dawn")(wav))
