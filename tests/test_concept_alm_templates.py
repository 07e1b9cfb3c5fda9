"""Stage 10's prompts under chat templates shaped like the hub checkpoints' own (a default system turn, the
audio placeholder tokens where each model puts them), not only a minimal template: the text the model reads,
a configured system turn replacing the default, the audio expanded to its frames, and scoring still the plain
token log-likelihood of the full forward."""
import numpy as np
import pytest
import torch
from transformers import Qwen2AudioProcessor

from sertk.models.generative_alm import GenerativeALM, emotion_prompt

from test_generative_alm import _audio, _hand_logprob, tiny_audio_flamingo3, tiny_omni_thinker, tiny_qwen2_audio

# Qwen/Qwen2.5-Omni-7B's chat_template (audio, image and video branches; default system turn)
OMNI = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# nvidia/audio-flamingo-3-hf's processor chat_template (transformers' conversion script): one <sound> before
# the text of a turn that has audio; a default system turn
AF3 = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% set audio = namespace(found=False) %}"
    "{% set text_buf = namespace(v='') %}{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
               "auditory and visual inputs, as well as generating text and speech.")
# kind -> (builder, hub-shaped template, what the user turn opens with before the text)
HUB = {
    "qwen2_audio": (tiny_qwen2_audio, Qwen2AudioProcessor.default_chat_template,
                    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"),
    "qwen2_5_omni_thinker": (tiny_omni_thinker, OMNI, "<|audio_bos|><|AUDIO|><|audio_eos|>"),
    "audioflamingo3": (tiny_audio_flamingo3, AF3, "<sound>"),
}
LABELS = ["neutral", "happy", "angry", "sad"]
TOKENS = {"energy": "high", "pitch": "low", "dynamics": "mid"}


def _load(kind, path, system=None):
    builder, template, _ = HUB[kind]
    torch.manual_seed(0)
    model, proc = builder()
    proc.chat_template = template
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return GenerativeALM.load({"name_or_path": str(path), "device": "cpu", "dtype": "float32", "system": system})


@pytest.fixture(params=sorted(HUB), scope="module")
def hub_alm(request, tmp_path_factory):
    return request.param, _load(request.param, tmp_path_factory.mktemp(request.param))


def test_the_prompt_is_the_hub_templates_text(hub_alm):
    kind, alm = hub_alm
    text = emotion_prompt("Which emotion? Answer with one word: {labels}.", LABELS, TOKENS)
    assert alm.chat_text(text) == (DEFAULT_SYSTEM + "<|im_start|>user\n" + HUB[kind][2] + text +
                                   "<|im_end|>\n<|im_start|>assistant\n")


def test_a_configured_system_turn_replaces_the_default_one(hub_alm, tmp_path):
    kind, _ = hub_alm
    alm = _load(kind, tmp_path, system=OMNI_SYSTEM)
    chat = alm.chat_text("Which emotion?")
    assert chat.startswith(f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert chat.count("<|im_start|>system") == 1 and "You are a helpful assistant." not in chat
    ids = alm.encode(["Which emotion?"], _audio(1))["input_ids"][0].tolist()
    assert alm.tokenizer.decode(ids).startswith(f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>")


def test_audio_placeholder_expands_to_the_clips_frames_and_scores_stay_the_full_forwards(hub_alm):
    """The processor expands the template's one placeholder to as many audio tokens as the clip has frames
    (a longer clip, more tokens); the rest of the prompt (system turn, token block) survives tokenisation,
    and scoring with cached audio is the summed token log-probability of the full model's forward."""
    kind, alm = hub_alm
    wavs = _audio(2)
    texts = [emotion_prompt("Which emotion? {labels}.", LABELS),
             emotion_prompt("Which emotion? {labels}.", LABELS, TOKENS)]
    batch = alm.encode(texts, wavs)
    n_audio = (batch["input_ids"] == alm.audio_token_id).sum(1).tolist()
    cached = alm.audio_embeds(wavs)
    assert n_audio == [c.shape[0] for c in cached] and n_audio[0] > n_audio[1] > 1  # 1.5 s vs 0.7 s
    for i, t in enumerate(texts):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        decoded = alm.tokenizer.decode(ids[ids != alm.audio_token_id])
        assert decoded.startswith(DEFAULT_SYSTEM.rstrip("\n")) and t in decoded
        assert decoded.endswith("<|im_start|>assistant\n")
    cands = alm.candidate_ids([w for w in LABELS], "<|im_end|>")
    scores = alm.score(texts, wavs, cands, audio_embeds=cached)
    for i in range(2):
        for j in (0, 3):
            assert scores[i, j].item() == pytest.approx(_hand_logprob(alm, texts[i], wavs[i], cands[j]), abs=2e-4)
    assert np.isfinite(scores.numpy()).all()


def _greedy(alm, text, wav, n):
    """Greedy decoding by hand: the argmax of the full model's forward, one token at a time, until the end."""
    batch = alm.encode([text], [wav])
    ids, out = batch["input_ids"], []
    ends = alm.model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends])
    with torch.no_grad():
        for _ in range(n):
            step = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            nxt = int(alm.model(**step).logits[0, -1].argmax())
            if nxt in ends:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return alm.tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.parametrize("kind", sorted(HUB))
def test_greedy_answers_ignore_the_hub_generation_configs_sampling_and_penalties(kind, tmp_path):
    """AF3's hub generation_config samples (temperature 0.7, top-k 20, top-p 0.8) with repetition_penalty
    1.05; stage 10's generation decision is greedy, so none of that may reach its answers."""
    builder, template, _ = HUB[kind]
    torch.manual_seed(0)
    model, proc = builder()
    proc.chat_template = template
    model.generation_config.update(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05,
                                   eos_token_id=proc.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    alm = GenerativeALM.load({"name_or_path": str(tmp_path), "device": "cpu", "dtype": "float32"})
    texts = [emotion_prompt("Which emotion? {labels}.", LABELS, TOKENS), "Describe the audio."]
    wavs = _audio(2)
    assert alm.generate(texts, wavs, 12) == [_greedy(alm, t, w, 12) for t, w in zip(texts, wavs)]
    assert alm.hub_generation_config.repetition_penalty == 1.05  # kept for the record
