"""Generative ALM wrapper: the three hub classes (tiny local configs) and the zoo ALM's class go through
one interface -- forward, generate, constrained scoring -- and scoring is the plain token log-likelihood."""
import numpy as np
import pytest
import torch
from transformers import (AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor,
                          Qwen2_5OmniProcessor, Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration,
                          Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                          Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor)

from sertk.models.generative_alm import GenerativeALM, emotion_prompt, model_class, parse_answer
from sertk.zoo.text_lm import EOS, train_tokenizer

LINES = ["what emotion does the speaker express? answer with one word: neutral, happy, angry, sad.",
         "acoustic cues: energy: high, pitch: low, dynamics: mid.", "the speaker sounds angry and loud"] * 4
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=512)
AUDIO = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_mel_bins=16,
             max_source_positions=100)  # 2 s window of 10 ms frames
# a minimal chat template (the hub ones are longer): audio placeholder, then the text
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
            "{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}AUDIO_SLOT{% elif c['type'] == 'text' %}"
            "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(specials, named=None):
    tok = train_tokenizer(LINES, 300, 1)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *specials]})
    if named:  # Qwen2.5-Omni's processor reads its placeholders from the tokenizer's named tokens
        tok._set_model_specific_special_tokens(special_tokens=named)
    tok.pad_token = EOS
    return tok


def _fe():
    return WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, chunk_length=2, n_fft=400)


def tiny_qwen2_audio():
    tok = _tokenizer(["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"])
    proc = Qwen2AudioProcessor(_fe(), tok, chat_template=TEMPLATE.replace("AUDIO_SLOT", "<|audio_bos|><|AUDIO|><|audio_eos|>"))
    cfg = Qwen2AudioConfig(audio_config={**{k.replace("num_hidden_layers", "encoder_layers").replace(
        "num_attention_heads", "encoder_attention_heads").replace("intermediate_size", "encoder_ffn_dim"): v
        for k, v in AUDIO.items()}, "d_model": 32}, text_config=dict(TEXT, model_type="qwen2", vocab_size=len(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    return Qwen2AudioForConditionalGeneration(cfg), proc


def tiny_audio_flamingo3():
    tok = _tokenizer(["<sound>"])
    proc = AudioFlamingo3Processor(_fe(), tok, chat_template=TEMPLATE.replace("AUDIO_SLOT", "<sound>"))
    cfg = AudioFlamingo3Config(audio_config=dict(AUDIO, hidden_size=32), text_config=dict(TEXT, vocab_size=len(tok)),
                               audio_token_id=tok.convert_tokens_to_ids("<sound>"))
    return AudioFlamingo3ForConditionalGeneration(cfg), proc


def tiny_omni_thinker():
    names = {"audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
             "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>"}
    tok = _tokenizer(list(names.values()), names)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}
    proc = Qwen2_5OmniProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                feature_extractor=_fe(), tokenizer=tok,
                                chat_template=TEMPLATE.replace("AUDIO_SLOT", "<|audio_bos|><|AUDIO|><|audio_eos|>"))
    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=16,
                          max_source_positions=100, output_dim=32, n_window=50),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        text_config=dict(TEXT, vocab_size=len(tok),
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"])
    return Qwen2_5OmniThinkerForConditionalGeneration(cfg), proc


BUILDERS = {"qwen2_audio": tiny_qwen2_audio, "audioflamingo3": tiny_audio_flamingo3,
            "qwen2_5_omni_thinker": tiny_omni_thinker}


def _audio(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * d))).astype(np.float32) for d in (1.5, 0.7, 1.1)[:n]]


@pytest.fixture(params=sorted(BUILDERS))
def alm(request, tmp_path):
    """Each tiny model saved and loaded back through GenerativeALM.load, as a hub name would be."""
    torch.manual_seed(0)
    model, proc = BUILDERS[request.param]()
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = GenerativeALM.load({"name_or_path": str(tmp_path), "device": "cpu", "dtype": "float32"})
    assert type(loaded.model) is model_class(request.param)
    return loaded


def _hand_logprob(alm, text, wav, ids):
    """log p(ids | prompt) from one unbatched forward of the full model on [prompt | ids]."""
    batch = alm.encode([text], [wav])
    n = batch["input_ids"].shape[1]
    full = dict(batch)
    full["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([ids])], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(alm.model(**full).logits.float(), -1)[0]
    return sum(float(logp[n - 1 + t, tok]) for t, tok in enumerate(ids))


def test_forward_generate_and_score_for_each_model_class(alm):
    texts = [emotion_prompt("which emotion? {labels}.", ["happy", "sad"]),
             emotion_prompt("which emotion? {labels}.", ["happy", "sad"], {"energy": "high", "pitch": "low"}),
             "describe the audio."]
    wavs = _audio(3)
    batch = alm.encode(texts, wavs)
    with torch.no_grad():
        logits = alm.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    answers = alm.generate(texts, wavs, max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    cands = alm.candidate_ids(["happy", "sad", "angry"], "<|im_end|>")
    scores = alm.score(texts, wavs, cands)
    assert scores.shape == (3, 3) and (scores < 0).all()
    # constrained scoring is the summed token log-probability of the unbatched full-model forward
    for i in (0, 2):
        for j in range(3):
            assert scores[i, j].item() == pytest.approx(_hand_logprob(alm, texts[i], wavs[i], cands[j]), abs=2e-4)


def test_scores_do_not_depend_on_batch_companions(alm):
    """Left padding of a batch must not change a row: each row scores as it would alone."""
    wavs = _audio(3)
    texts = ["a.", "a much longer question about the emotion of the speaker.", "b"]
    cands = alm.candidate_ids(["happy", "sad"])
    together = alm.score(texts, wavs, cands)
    alone = torch.cat([alm.score([t], [w], cands) for t, w in zip(texts, wavs)])
    assert torch.allclose(together, alone, atol=2e-4)


def test_the_audio_reaches_the_scores(alm):
    wavs = _audio(2)
    cands = alm.candidate_ids(["happy", "sad"])
    a = alm.score(["which?"], [wavs[0]], cands)
    b = alm.score(["which?"], [wavs[1]], cands)
    assert not torch.allclose(a, b)


def test_audio_computed_once_gives_the_decisions_of_the_full_forward(alm):
    """Stage 10 runs each clip's audio encoder once for all its prompts: scores and greedy answers from the
    cached audio rows equal those of the model's own forward, for every model class."""
    labels = ["angry", "happy", "neutral", "sad"]
    texts = [emotion_prompt("Which emotion? {labels}.", labels),
             emotion_prompt("Which emotion? {labels}.", labels, {"energy": "high", "pitch": "low"})]
    wavs = _audio(2)
    cached = alm.audio_embeds(wavs)
    assert [c.shape[0] for c in cached] != [0, 0]
    cands = alm.candidate_ids(labels)
    assert torch.allclose(alm.score(texts, wavs, cands, audio_embeds=cached), alm.score(texts, wavs, cands),
                          atol=1e-4)
    assert alm.generate(texts, wavs, 4, audio_embeds=cached) == alm.generate(texts, wavs, 4)
    with pytest.raises(ValueError, match="audio tokens for"):  # another clip's rows do not fit this prompt
        alm.score(texts, wavs, cands, audio_embeds=cached[::-1])


def test_prompt_with_tokens_differs_only_by_the_token_block():
    toks = {"energy": "high", "pitch": "mid", "dynamics": "low"}
    without = emotion_prompt("Which emotion? Answer: {labels}.", ["neutral", "sad"])
    with_ = emotion_prompt("Which emotion? Answer: {labels}.", ["neutral", "sad"], toks, "Cues: {tokens}.", " ")
    assert without == "Which emotion? Answer: neutral, sad."
    block = " Cues: energy: high, pitch: mid, dynamics: low."
    assert with_ == without + block and with_.replace(block, "") == without


@pytest.mark.parametrize("text,label", [
    ("angry", "ang"), ("The speaker sounds Angry.", "ang"), ("sad, not angry", "sad"), ("sadly", None),
    ("I cannot tell.", None), ("neutral<|im_end|>", "neu"), ("joyful and excited", "hap"), ("", None)])
def test_parse_answer(text, label):
    answers = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad"}
    assert parse_answer(text, answers, {"hap": ["joyful", "excited"]}) == label


def test_an_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match="gpt2.*not a supported"):
        model_class("gpt2")


def test_zoo_alm_builds_and_loads_like_the_hub_model(tmp_path):
    """Stage 0's generative ALM (smoke size): the hub class, its processor and chat template saved beside it,
    loaded by the wrapper from the path, and asked the stage-10 question with and without tokens. Its audio
    tower is zoo/whisper_tiny_en's encoder, and the frozen-tower training loss (tower outputs computed once)
    is the loss the model's own forward computes from the log-mel."""
    import json

    from sertk.common.config import load_config
    from sertk.data.synth import generate_corpus
    from sertk.zoo import build_zoo
    from pathlib import Path

    from zoo_fixtures import tiny_zoo

    synth = load_config(Path(__file__).resolve().parent.parent / "egs/mini_emo/conf/synth.yaml", ["pretrain.speakers=4", "pretrain.utts_per_speaker=4"])
    generate_corpus(synth, tmp_path / "audio", tmp_path / "data", nj=1, part="pretrain")
    cfg = tiny_zoo()
    cfg["models"] = {k: cfg["models"][k] for k in ("whisper_tiny_en", "alm")}
    built = build_zoo(cfg, tmp_path / "data/pretrain", tmp_path / "zoo", only=["alm"])  # + what it starts from
    assert set(built) == {"whisper_tiny_en", "alm"}
    card = built["alm"]
    assert card["class"] == "Qwen2AudioForConditionalGeneration"
    assert card["stands_in_for"] == "Qwen/Qwen2-Audio-7B-Instruct"
    assert {"parsed_none", "uar_none", "describe_level_acc", "describe_level_acc_tokens"} <= set(card["dev"])
    assert "never with tokens" in card["objective"] and "none with an emotion label" in card["objective"]
    d = tmp_path / "zoo" / "alm"
    assert json.loads((d / "config.json").read_text())["model_type"] == "qwen2_audio"
    alm = GenerativeALM.load({"name_or_path": str(d), "device": "cpu"})
    assert type(alm.model) is Qwen2AudioForConditionalGeneration and "<|AUDIO|>" in alm.chat_text("x")
    prompts = cfg["models"]["alm"]["prompts"]
    labels = ["angry", "happy", "neutral", "sad"]
    texts = [emotion_prompt(prompts["emotion"], labels),
             emotion_prompt(prompts["emotion"], labels, {"energy": "high"}, prompts["token_block"])]
    wavs = _audio(2)
    assert len(alm.generate(texts, wavs, 4)) == 2
    assert alm.score(texts, wavs, alm.candidate_ids(labels, "<|im_end|>")).shape == (2, 4)
    _check_whisper_tower(alm.model, tmp_path / "zoo" / "whisper_tiny_en", alm, texts[0], wavs[0])


def _check_whisper_tower(model, whisper_dir, alm, text, wav):
    from transformers import WhisperForConditionalGeneration

    from sertk.zoo.generative_alm import frozen_tower_loss, tower_outputs

    enc = WhisperForConditionalGeneration.from_pretrained(whisper_dir).model.encoder.state_dict()
    tower = model.model.audio_tower.state_dict()
    n_pos = tower["embed_positions.weight"].shape[0]
    assert n_pos == 150  # the 3 s window's frames of Whisper's 1,500 positions
    assert torch.equal(tower["embed_positions.weight"], enc["embed_positions.weight"][:n_pos])
    assert all(torch.equal(tower[k], enc[k]) for k in tower if k != "embed_positions.weight")
    batch = alm.encode([text], [wav])
    labels = batch["input_ids"].clone()
    labels[:, :-2] = -100
    with torch.no_grad():
        direct = model(**batch, labels=labels).loss
        feats, masks = batch["input_features"].numpy(), batch["feature_attention_mask"].numpy()
        n_audio = int((batch["input_ids"] == model.config.audio_token_id).sum())
        cached = tower_outputs(model, feats, masks, [n_audio])[0]
        via_cache = frozen_tower_loss(model, {"input_ids": batch["input_ids"], "attention_mask":
                                              batch["attention_mask"], "labels": labels, "audio_embeds": cached})
    assert torch.allclose(direct, via_cache, atol=1e-5), (direct, via_cache)
