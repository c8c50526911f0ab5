"""Chunked token2wav (the streaming vocoder) against whole-reply token2wav, on the tiny Qwen2.5-Omni.

Tolerances, as measured on this model (random weights at speech level, DiT blocks of 4 codes so a short
reply spans many chunks):
- our DiT sampler equals transformers' token2wav exactly when given the same starting noise;
- BigVGAN run on chunks with 16 mel frames of context either side equals the whole run to ~2e-6;
- the streamed reply with windows covering the whole reply equals the whole reply to float precision;
- with the default window (2 blocks back, 1 ahead) the streamed audio is within 25 dB SNR of the whole
  audio (35 dB measured); a wider window (4 back, 2 ahead) within 55 dB (68 dB measured). The error is
  what the DiT's ODE would have drawn from context outside the window.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.backends.omni.tiny import build_tiny_model
from engine.backends.omni.token2wav import ChunkSettings, Token2Wav, dit_sample

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    with torch.inference_mode():
        yield build_tiny_model(seed=5, dit_block_size=8)


@pytest.fixture(scope="module")
def codes():
    return torch.randint(0, 60, (72,), generator=torch.Generator().manual_seed(11)).tolist()


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    error = float(((reference - other) ** 2).sum())
    return float("inf") if error == 0 else 10 * np.log10(float((reference ** 2).sum()) / error)


def streamed(model, codes, settings: ChunkSettings, step: int = 3) -> list[np.ndarray]:
    voice = Token2Wav(model.token2wav, model.speaker_map["Chelsie"], settings, seed=2)
    chunks = []
    for start in range(0, len(codes), step):  # codes arrive a few at a time, as the talker makes them
        chunks += voice.push(codes[start:start + step])
    chunks.append(voice.finish())
    return chunks


@torch.inference_mode()
def test_dit_sampler_is_transformers_token2wav_given_the_same_noise(model, codes):
    speaker = model.speaker_map["Chelsie"]
    code_tensor = torch.tensor([codes])
    torch.manual_seed(9)
    theirs = model.token2wav(code_tensor, conditioning=speaker["cond"], reference_mel=speaker["ref_mel"]).numpy()
    torch.manual_seed(9)
    noise = torch.randn([1, len(codes) * 2, 80])  # what their sampler draws first
    mel = dit_sample(model.token2wav.code2wav_dit_model, speaker["cond"], speaker["ref_mel"], code_tensor, noise)
    ours = model.token2wav.code2wav_bigvgan_model(mel).numpy()
    assert np.abs(theirs).max() > 0.05  # audible, so the comparison means something
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@torch.inference_mode()
def test_streamed_audio_equals_whole_audio_when_the_window_covers_the_reply(model, codes):
    whole = Token2Wav(model.token2wav, model.speaker_map["Chelsie"], ChunkSettings(), seed=2).whole(codes)
    covering = ChunkSettings(lookback_blocks=100, lookahead_blocks=100, vocoder_context_frames=1000)
    audio = np.concatenate(streamed(model, codes, covering))
    assert audio.size == whole.size == len(codes) * 2 * 240
    np.testing.assert_allclose(audio, whole, atol=1e-5)


@torch.inference_mode()
def test_streamed_audio_stays_close_to_whole_audio_and_starts_after_the_first_chunk(model, codes):
    default = ChunkSettings()
    whole = Token2Wav(model.token2wav, model.speaker_map["Chelsie"], default, seed=2).whole(codes)
    chunks = streamed(model, codes, default)
    audio = np.concatenate(chunks)
    assert audio.size == whole.size
    assert len([c for c in chunks if c.size]) >= 8  # many chunks, not one at the end
    assert snr_db(whole, audio) > 25.0
    wider = np.concatenate(streamed(model, codes, ChunkSettings(lookback_blocks=4, lookahead_blocks=2,
                                                                   vocoder_context_frames=32)))
    assert snr_db(whole, wider) > 55.0

    # The first chunk leaves as soon as its own block and the lookahead block exist: 2 blocks of 4 codes.
    voice = Token2Wav(model.token2wav, model.speaker_map["Chelsie"], default, seed=2)
    assert voice.push(codes[:7]) == []
    first = voice.push(codes[7:8])
    assert len(first) == 1 and first[0].size == 4 * 2 * 240


@torch.inference_mode()
def test_vocoder_on_chunks_with_context_equals_the_whole_run(model):
    vocoder = model.token2wav.code2wav_bigvgan_model
    mel = torch.randn(1, 80, 120, generator=torch.Generator().manual_seed(4))
    whole = vocoder(mel).numpy()
    pieces = []
    for start in range(0, 120, 16):
        left, right = max(0, start - 16), min(120, start + 32)
        wave = vocoder(mel[:, :, left:right]).numpy()
        pieces.append(wave[(start - left) * 240:(min(start + 16, 120) - left) * 240])
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=2e-5)
