"""ONNX export of students: dynamic length parity, int8 size, self-describing metadata, serving, profile."""
import numpy as np
import pytest
import torch

from sertk.data.audio import write_audio
from sertk.export.onnx_export import export_onnx, metadata, parity, quantize_int8, run_onnx, session, size_kb
from sertk.export.profile import count_params, macs_per_second, onnx_runtime_profile
from sertk.export.serve import predict_onnx
from sertk.models.wav2small import Wav2Small

META = {"output_names": "arousal,valence,dominance", "label_order": "arousal,valence,dominance",
        "sample_rate": 16000, "licence": "CC-BY-NC-SA-4.0"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = Wav2Small("paper")
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial statistics, as after training
        for _ in range(3):
            model(torch.randn(4, 16000) * 0.2, torch.tensor([16000, 12000, 9000, 16000]))
    model.eval()
    d = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, d / "model.onnx", META)
    int8 = quantize_int8(fp32, d / "model.int8.onnx")
    return model, fp32, int8, d


def test_fp32_onnx_matches_torch_at_any_length(exported):
    model, fp32, _, _ = exported
    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 16000, 37_123)]
    assert parity(model, fp32, wavs) < 1e-4


def test_int8_is_small_and_close_and_self_describing(exported):
    model, fp32, int8, _ = exported
    assert 60 <= size_kb(int8) <= 120 < size_kb(fp32)  # paper: 60-120 KB for the ~72K model
    meta = metadata(int8)
    assert meta["output_names"] == "arousal,valence,dominance" and meta["sample_rate"] == "16000"
    assert meta["licence"] and "int8" in meta["quantization"]
    rng = np.random.default_rng(1)
    wavs = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(4)]
    s32, s8 = session(fp32), session(int8)
    a = np.stack([run_onnx(s32, w) for w in wavs])
    b = np.stack([run_onnx(s8, w) for w in wavs])
    scale = np.abs(a).max() + 1e-6
    assert np.abs(a - b).max() / scale < 0.2 and not np.array_equal(a, b)


def test_compacting_the_int8_graph_changes_no_output(exported):
    """Short names, no value_info: the same outputs, the serving names and metadata kept."""
    _, fp32, int8, d = exported
    plain = quantize_int8(fp32, d / "model.plain.int8.onnx", compact=False)
    assert size_kb(int8) < size_kb(plain) - 20
    rng = np.random.default_rng(3)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3000, 16000, 41_000)]
    s_plain, s_int8 = session(plain), session(int8)
    for w in wavs:
        np.testing.assert_allclose(run_onnx(s_int8, w), run_onnx(s_plain, w), rtol=0, atol=1e-6)
    assert metadata(int8) == metadata(plain)
    assert [i.name for i in s_int8.get_inputs()] == ["wav"] and [o.name for o in s_int8.get_outputs()] == ["avd"]


def test_predict_onnx_reads_files_and_names_outputs(exported, tmp_path):
    model, _, int8, _ = exported
    rng = np.random.default_rng(2)
    items = {}
    for u in ("b", "a"):
        wav = rng.standard_normal(8000).astype(np.float32) * 0.1
        write_audio(tmp_path / f"{u}.wav", wav, 16000)
        items[u] = str(tmp_path / f"{u}.wav")
    utts, names, out = predict_onnx(int8, items)
    assert utts == ["a", "b"] and names == ["arousal", "valence", "dominance"] and out.shape == (2, 3)
    np.testing.assert_allclose(out[0], run_onnx(session(int8), np.asarray(
        __import__("soundfile").read(items["a"], dtype="float32")[0])), atol=1e-6)


def test_profile_figures(exported):
    model, _, int8, _ = exported
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    per_s = macs_per_second(model, seconds=1.0)
    assert per_s == pytest.approx(macs_per_second(model, seconds=2.0), rel=0.05)  # linear in length
    assert 1e7 < per_s < 1e9
    prof = onnx_runtime_profile(int8, seconds=1.0, repeats=2)
    assert 0 < prof["rtf"] < 5 and prof["peak_ram_mb"] > prof["model_ram_mb"] >= 0


def _toy_corpus(root, rng):
    """Tones whose pitch drives A/V/D: a teacher can learn it in one short epoch."""
    for name, n in (("train", 16), ("dev", 8), ("test", 8)):
        d = root / name
        d.mkdir(parents=True)
        scp, spk, avd = [], [], []
        for i in range(n):
            u = f"{name}{i:02d}"
            f = rng.uniform(100, 2000)
            t = np.arange(int(rng.uniform(0.6, 1.2) * 16000)) / 16000
            wav = (np.sin(2 * np.pi * f * t) * 0.3 + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            write_audio(root / f"{u}.wav", wav, 16000)
            x = (f - 100) / 1900
            scp.append(f"{u} {root / (u + '.wav')}\n")
            spk.append(f"{u} s{i % 2}\n")
            avd.append(f"{u} {x:.3f} {1 - x:.3f} {0.5 * x:.3f}\n")
        for fname, lines in (("wav.scp", scp), ("utt2spk", spk), ("utt2avd", avd)):
            (d / fname).write_text("".join(lines))


def test_stage7_teacher_and_student_then_stage8_export_and_results(tmp_path):
    """The teacher/distill tasks as stages 7-8 run them: labels cached, ONNX exported, results written."""
    import json

    import yaml

    from sertk.common.protocol import Split
    from sertk.tasks import TaskContext, check_config
    from sertk.tasks import distill as distill_task
    from sertk.tasks import teacher as teacher_task

    _toy_corpus(tmp_path / "data", np.random.default_rng(0))
    split = Split(corpus="toy", protocol="p", scheme="speaker-independent", train="train", dev="dev",
                  tests=["test"], label_map=None)
    from zoo_fixtures import without_zoo
    recipe = without_zoo(yaml.safe_load((__import__("pathlib").Path(__file__).parent.parent
                                         / "egs/mini_emo/conf/teacher.yaml").read_text()))
    tcfg = {**recipe, "train": {**recipe["train"], "epochs": 1, "progress": False}, "eval": {"bootstrap": 0}}
    check_config(tcfg, "teacher")
    tctx = TaskContext(tmp_path / "data", tmp_path / "dump", tmp_path / "exp/teacher/p", "teacher", 7)
    teacher_task.train(tcfg, split, tctx)
    tres = json.loads(teacher_task.evaluate(tcfg, split, tctx)[0].read_text())
    assert tres["metrics"]["dims"] == ["arousal", "valence", "dominance"]

    scfg = {"task": "distill", "teacher": str(tmp_path / "exp/teacher"), "student": {"type": "wav2small", "channels": 8},
            "distill": {"loss": "ccc", "copies": 1, "allow_collapsed_teacher": True}, "train": {"epochs": 2, "batch_size": 8, "progress": False},
            "eval": {"bootstrap": 0, "profile_seconds": 1.0}}
    check_config(scfg, "student")
    sctx = TaskContext(tmp_path / "data", tmp_path / "dump", tmp_path / "exp/student/p", "w2s", 8)
    distill_task.train(scfg, split, sctx)
    cached = sorted(p.name for p in (tmp_path / "dump/teacher_labels").glob("*/seed*.txt"))
    assert cached == ["seed0.txt", "seed1.txt"]
    res = json.loads(distill_task.evaluate(scfg, split, sctx)[0].read_text())
    m, prof = res["metrics"], res["extra"]["profile"]
    assert res["task"] == "regression" and res["stage"] == 8
    assert set(m["ccc_teacher"]) == {"arousal", "valence", "dominance"}
    assert m["params"] == prof["params"] and m["onnx_int8_kb"] > 0
    assert prof["parity_fp32_max_abs"] < 1e-4 and m["rtf_1thread"] > 0
    assert metadata(prof["onnx_int8"])["teacher"].endswith("teacher/p")
    from sertk.export.table import students_table
    table = students_table([("teacher", "p", tres["metrics"]), ("w2s", "p", m)])
    row = table.splitlines()[3]
    assert row.startswith(f"| w2s | p | {m['params']:,d} |") and f"{m['onnx_int8_kb']:.1f}" in row
