"""Step-by-step thinker/talker generation and int8 quantization on the tiny Qwen2.5-Omni (CPU, no weights)."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch

from engine.backends.base import ReplyRequest, ScreenImage, Turn
from engine.backends.omni.generation import OmniGeneration, Sampling, TextToken
from engine.backends.omni.loading import load
from engine.backends.omni.prompt import build_prompt
from engine.backends.omni.quantize import Int8Linear, quantize_int8
from engine.backends.omni.settings import OmniSettings

torch.set_num_threads(1)
GREEDY = Sampling()


def png(width: int = 200, height: int = 120) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def loaded():
    return load(OmniSettings(model="tiny", seed=7, threads=1))


@pytest.fixture(scope="module")
def inputs(loaded):
    audio = (np.sin(np.arange(24_000) * 0.07) * 6000).astype(np.int16)
    request = ReplyRequest("Be brief.", (Turn("user", "What is this?", images=(ScreenImage(png()),)),
                                         Turn("assistant", "A blue square."),
                                         Turn("user", "", audio=audio)))
    return build_prompt(request, loaded.processors)


def test_prompt_holds_the_audio_and_the_image_as_their_own_tokens(loaded, inputs):
    ids = inputs.input_ids[0].tolist()
    config = loaded.model.thinker.config
    assert inputs.counts["audios"] == 1 and inputs.counts["images"] == 1
    assert ids.count(config.audio_token_index) == (((100 - 1) // 2 + 1) - 2) // 2 + 1  # 1 s = 100 mel frames
    grid = inputs.image_grid_thw[0]
    assert ids.count(config.image_token_index) == int(grid.prod()) // 4
    text = loaded.processors.tokenizer.decode(ids)
    assert "<|im_start|>assistant\nA blue square.<|im_end|>" in text
    assert text.startswith("<|im_start|>system\nYou are Qwen, a virtual human") and "Be brief." in text
    assert text.endswith("<|im_start|>assistant\n")


@torch.inference_mode()
def test_thinker_text_is_transformers_generate(loaded, inputs):
    model = loaded.model
    generation = OmniGeneration(model, inputs, None, eos_ids=loaded.eos_ids, max_text_tokens=13,
                                thinker_sampling=GREEDY)
    steps = list(generation.steps())
    assert all(isinstance(step, TextToken) for step in steps)
    theirs = model.thinker.generate(
        input_ids=inputs.input_ids, attention_mask=torch.ones_like(inputs.input_ids),
        input_features=inputs.input_features, feature_attention_mask=inputs.feature_attention_mask,
        pixel_values=inputs.pixel_values, image_grid_thw=inputs.image_grid_thw, max_new_tokens=12, do_sample=False)
    assert generation.text_tokens == theirs[0, inputs.input_ids.shape[1]:].tolist()


@torch.inference_mode()
def test_interleaved_talker_equals_the_talker_run_after_the_whole_text(loaded, inputs):
    """Streaming feeds the talker each thinker token as it is made; transformers' generate builds the same
    inputs from the finished text. Both must give the same codec tokens (greedy)."""
    model = loaded.model
    speaker = model.speaker_map["Chelsie"]
    generation = OmniGeneration(model, inputs, speaker, eos_ids=loaded.eos_ids, max_text_tokens=9, max_codes=30,
                                codes_per_text_token=1000, thinker_sampling=GREEDY, talker_sampling=GREEDY)
    order = "".join("T" if isinstance(step, TextToken) else "c" for step in generation.steps())
    assert order.startswith("TTc")  # speech starts two text tokens in, not after the whole text
    assert len(generation.codes) == 30
    assert generation.codes == reference_codes(model, inputs, speaker, text_tokens=9, codes=30)


def reference_codes(model, inputs, speaker, text_tokens: int, codes: int) -> list[int]:
    """transformers' Qwen2_5OmniForConditionalGeneration.generate, steps 1-2, then its talker loop written
    out: its talker.generate (5.24) drops the attention mask, which skips the talker's codec BOS/PAD
    conditioning and multimodal positions that the talker's forward applies when given one."""
    thinker, talker = model.thinker, model.talker
    result = thinker.generate(
        input_ids=inputs.input_ids, attention_mask=torch.ones_like(inputs.input_ids),
        input_features=inputs.input_features, feature_attention_mask=inputs.feature_attention_mask,
        pixel_values=inputs.pixel_values, image_grid_thw=inputs.image_grid_thw, max_new_tokens=text_tokens,
        do_sample=False, output_hidden_states=True, return_dict_in_generate=True)
    config = thinker.config
    embeds = result.hidden_states[0][0].clone()
    media = torch.isin(inputs.input_ids, torch.tensor([config.audio_token_index, config.image_token_index]))
    embeds[media] = 0
    hidden = [step[-1] for step in result.hidden_states]
    token_embeds = [embeds] + [step[0] for step in result.hidden_states[1:]]
    reply = torch.cat(hidden[1:], 1) + torch.cat(token_embeds[1:], 1)
    embed = thinker.get_input_embeddings()
    generated = result.sequences[:, inputs.input_ids.shape[1]:]
    bos = speaker["bos_token"]
    text_ids = torch.cat([inputs.input_ids, torch.tensor([[bos]]), generated[:, :1]], 1)
    prefill = torch.cat([hidden[0] + token_embeds[0], embed(torch.tensor([[bos]])), reply[:, :1]], 1)
    rest = torch.cat([reply[:, 1:], embed(torch.tensor([[talker.text_eos_token]])),
                      embed(torch.tensor([[talker.text_pad_token]]))], 1)
    out = talker(inputs_embeds=prefill, attention_mask=torch.ones_like(text_ids), input_text_ids=text_ids,
                 image_grid_thw=inputs.image_grid_thw, audio_feature_lengths=inputs.audio_lengths, use_cache=True)
    made = []
    for step in range(codes):
        logits = out.logits[0, -1].clone()
        logits[talker.codec_bos_token] = -float("inf")
        code = int(logits.argmax())
        if code in (talker.codec_eos_token, talker.codec_pad_token):
            break
        made.append(code)
        if step == codes - 1:
            break
        part = rest[:, min(step, rest.shape[1] - 1):][:, :1]
        cache = out.cache
        out = talker(input_ids=torch.tensor([[code]]), attention_mask=torch.ones((1, cache.get_seq_length() + 1),
                                                                                   dtype=torch.long),
                     thinker_reply_part=part, cache=cache, use_cache=True)
    return made


@torch.inference_mode()
def test_int8_weights_keep_the_logits_close(loaded, inputs):
    thinker = loaded.model.thinker
    quantized = copy.deepcopy(thinker)
    assert quantize_int8(quantized.model.language_model) == 14  # 7 linear layers in each of 2 decoder layers
    assert isinstance(quantized.model.language_model.layers[0].mlp.down_proj, Int8Linear)
    kwargs = dict(input_ids=inputs.input_ids, input_features=inputs.input_features,
                  feature_attention_mask=inputs.feature_attention_mask, pixel_values=inputs.pixel_values,
                  image_grid_thw=inputs.image_grid_thw)
    reference, got = thinker(**kwargs).logits, quantized(**kwargs).logits
    bias = thinker.lm_head.bias  # the tiny model's word-steering bias would flatter the comparison: leave it out
    ref, new = (reference - bias).flatten(), (got - bias).flatten()
    assert torch.nn.functional.cosine_similarity(ref, new, dim=0) > 0.9999
    assert (ref - new).abs().max() < 0.02 * ref.std() * 10  # measured: 1.5e-3 with logits of std ~0.1
    assert (reference.argmax(-1) == got.argmax(-1)).float().mean() > 0.95


@torch.inference_mode()
def test_int8_backend_loads_and_speaks():
    quantized = load(OmniSettings(model="tiny", seed=7, threads=1, quantization="int8"))
    assert sum(isinstance(m, Int8Linear) for m in quantized.model.modules()) == 28  # thinker and talker
    request = ReplyRequest("", (Turn("user", "hello"),))
    inputs = build_prompt(request, quantized.processors)
    generation = OmniGeneration(quantized.model, inputs, quantized.model.speaker_map["Ethan"],
                                eos_ids=quantized.eos_ids, max_text_tokens=5, max_codes=6)
    list(generation.steps())
    assert generation.text_tokens and len(generation.codes) == 6


@torch.inference_mode()
def test_a_checkpoint_folder_loads_through_from_pretrained(tmp_path):
    """`--omni-model PATH`: the folder layout of a downloaded checkpoint (safetensors, spk_dict.pt,
    tokenizer, preprocessor config), loaded by transformers' from_pretrained with no network."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from engine.backends.omni.tiny import build_tiny_model, tiny_tokenizer

    model = build_tiny_model(seed=2)
    model.save_pretrained(tmp_path)
    torch.save(model.speaker_map, tmp_path / "spk_dict.pt")
    tiny_tokenizer().save_pretrained(tmp_path)
    # One preprocessor_config.json holds both the audio and the image settings, as in the official repositories.
    merged = {**Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).to_dict(),
              **WhisperFeatureExtractor(feature_size=20).to_dict()}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(merged, default=str))

    loaded = load(OmniSettings(model=str(tmp_path), device="cpu", threads=1))
    saved, got = model.state_dict(), loaded.model.state_dict()
    # The tiny model's steering biases are not part of the architecture, so a checkpoint cannot hold them.
    assert set(saved) - set(got) == {"thinker.lm_head.bias", "talker.codec_head.bias"}
    assert all(torch.equal(saved[name], got[name]) for name in got)
    assert set(loaded.model.speaker_map) == {"Chelsie", "Ethan"}
    assert loaded.processors.feature_extractor.feature_size == 20
    assert loaded.processors.image_processor.size["longest_edge"] == 640 * 28 * 28  # the backend's cap
    audio = (np.sin(np.arange(24_000) * 0.05) * 5000).astype(np.int16)
    inputs = build_prompt(ReplyRequest("", (Turn("user", "hi", audio=audio, images=(ScreenImage(png()),)),)),
                          loaded.processors)
    generation = OmniGeneration(loaded.model, inputs, loaded.model.speaker_map["Chelsie"], eos_ids=loaded.eos_ids,
                                max_text_tokens=4, max_codes=4)
    list(generation.steps())
    assert generation.text_tokens

    # int8 from a checkpoint: loaded as bf16 (no float32 copy to shrink), LM layers replaced, the rest float32.
    small = load(OmniSettings(model=str(tmp_path), device="cpu", threads=1, quantization="int8"))
    assert sum(isinstance(m, Int8Linear) for m in small.model.modules()) == 28
    assert {p.dtype for p in small.model.parameters()} == {torch.float32}
    inputs = build_prompt(ReplyRequest("", (Turn("user", "hi"),)), small.processors)
    generation = OmniGeneration(small.model, inputs, small.model.speaker_map["Chelsie"], eos_ids=small.eos_ids,
                                max_text_tokens=4, max_codes=4)
    list(generation.steps())


@torch.inference_mode()
def test_the_conversation_cache_prefills_only_what_is_new_and_changes_nothing(loaded):
    """Three turns through one cache, each compared with a fresh run of the same prompt: the same text and
    codec tokens (greedy), while the cached run prefills only the tokens after the shared prefix. Turn 2
    holds the first reply cut short (as after a truncate); turn 3 repeats turn 2 (a speculative reply and
    the adopted one)."""
    from engine.backends.omni.conversation_cache import ConversationCache

    model, speaker = loaded.model, loaded.model.speaker_map["Chelsie"]
    audio = (np.sin(np.arange(12_000) * 0.03) * 5000).astype(np.int16)
    first = (Turn("user", "", audio=audio, images=(ScreenImage(png()),)),)
    cache = ConversationCache()

    def run(turns, use_cache):
        inputs = build_prompt(ReplyRequest("Be brief.", turns), loaded.processors)
        generation = OmniGeneration(model, inputs, speaker, eos_ids=loaded.eos_ids, max_text_tokens=8, max_codes=12,
                                    thinker_sampling=GREEDY, talker_sampling=GREEDY,
                                    cache=cache if use_cache else None)
        list(generation.steps())
        return generation

    one = run(first, True)
    assert one.cached_tokens == 0
    heard = loaded.processors.tokenizer.decode(one.text_tokens[:4])
    second_turns = (*first, Turn("assistant", heard), Turn("user", "", audio=audio[:8000]))
    for turns in (second_turns, second_turns):
        cached, fresh = run(turns, True), run(turns, False)
        assert (cached.text_tokens, cached.codes) == (fresh.text_tokens, fresh.codes)
        assert len(cached.codes) == 12
        assert 0 < cached.cached_tokens < cached.prompt_tokens
    assert cached.cached_tokens == cached.prompt_tokens - 1  # the repeat prefills a single token


@torch.inference_mode()
def test_prefilling_the_history_ahead_changes_nothing(loaded):
    """What the session does while the user speaks: the history goes into the cache (thinker and talker)
    first, then the reply with the new turn runs only that turn, with the same tokens as a fresh run."""
    from engine.backends.omni.conversation_cache import ConversationCache
    from engine.backends.omni.generation import prefill

    model, speaker = loaded.model, loaded.model.speaker_map["Ethan"]
    history = (Turn("user", "hello there"), Turn("assistant", "hi, how can I help"))
    cache = ConversationCache()
    assert prefill(model, build_prompt(ReplyRequest("Be kind.", history), loaded.processors), cache) == 0
    turns = (*history, Turn("user", "", audio=(np.sin(np.arange(9_000) * 0.02) * 7000).astype(np.int16)))
    inputs = build_prompt(ReplyRequest("Be kind.", turns), loaded.processors)
    results = []
    for use in (cache, None):
        generation = OmniGeneration(model, inputs, speaker, eos_ids=loaded.eos_ids, max_text_tokens=6, max_codes=10,
                                    thinker_sampling=GREEDY, talker_sampling=GREEDY, cache=use)
        list(generation.steps())
        results.append((generation.text_tokens, generation.codes, generation.cached_tokens))
    (text, codes, cached), (fresh_text, fresh_codes, _) = results
    assert (text, codes) == (fresh_text, fresh_codes) and len(codes) == 10
    assert cached > inputs.input_ids.shape[1] // 2  # the history (and instructions) came from the cache
