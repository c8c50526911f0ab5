"""The omni backend's own figures, measured in-process with the server stopped, and its non-streaming baseline.

- first_audio_chunk_ms: reply request → first chunk of speech, through the streaming path the server uses.
- rtf: compute seconds per second of speech, for the whole spoken reply (thinker + talker + vocoder).
- vram_mb: peak GPU memory (None on CPU).
- asr_rtf: with input transcription on, Whisper's seconds per second of the prompt, run on a thread beside the
  reply as in a conversation (so first_audio_chunk_ms includes its competition for the CPU); None when off.
- Baseline: the same model used the way transformers' generate uses it: the whole text, then all the codec
  tokens, then token2wav on all of them; the first sound comes only at the end.
The spoken prompts go in as audio, as through the server (the omni model hears them itself).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.bench.components import _end_of_turn_ms
from engine.bench.prompts import SpokenPrompt
from engine.bench.stats import p50, p95
from engine.backends.base import ReplyRequest, ReplyStats, SpeechChunk, Turn
from engine.realtime.session_config import DEFAULT_INSTRUCTIONS
from engine.speech.asr import SAMPLE_RATE


def measure_omni(backend, vad_model, prompts: list[SpokenPrompt], silence_ms: int, streaming_p50: float | None) -> dict:
    import torch

    from engine.backends.omni.generation import OmniGeneration, Sampling
    from engine.backends.omni.prompt import build_prompt
    from engine.backends.omni.token2wav import Token2Wav

    if backend.loaded.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    firsts, rtfs, first_chunks, prefill, decode, asr_rtfs = [], [], [], [], [], []
    baseline, parts = [], {"end_of_turn": [], "llm": [], "tts": []}
    for prompt in prompts:
        pcm = np.clip(prompt.audio * 32768, -32768, 32767).astype(np.int16)
        request = ReplyRequest(DEFAULT_INSTRUCTIONS, (Turn("user", "", audio=pcm),))
        stats = ReplyStats()
        transcription = _Transcription(backend.asr, prompt.audio) if backend.asr is not None else None
        first, seconds, total = asyncio.run(_stream(backend, request, stats))
        if transcription is not None:
            asr_rtfs.append(transcription.rtf())
        if first is not None:
            firsts.append(first)
        if seconds:
            rtfs.append(total / seconds)
        prefill.append(stats.prefill_tok_s or None)
        decode.append(stats.decode_tok_s or None)

        # Baseline: every stage whole, one after the other.
        end_of_turn = _end_of_turn_ms(vad_model, prompt.audio, silence_ms)
        loaded = backend.loaded
        started = time.monotonic()
        inputs = build_prompt(request, loaded.processors, backend.settings.max_prompt_tokens).to(loaded.device,
                                                                                                 loaded.dtype)
        generation = OmniGeneration(loaded.model, inputs, backend.speaker("default"), eos_ids=loaded.eos_ids,
                                    max_text_tokens=backend.settings.max_reply_tokens + 1,
                                    max_codes=backend.max_codes(), thinker_sampling=Sampling(), seed=1)
        for _ in generation.steps():
            pass
        llm_ms = (time.monotonic() - started) * 1000
        voice = Token2Wav(loaded.model.token2wav, backend.speaker("default"), backend.chunks, seed=1)
        started = time.monotonic()
        if generation.codes:
            voice.whole(generation.codes)
        tts_ms = (time.monotonic() - started) * 1000
        started = time.monotonic()
        needed = (backend.chunks.first_chunk_blocks + backend.chunks.lookahead_blocks) * voice.block_codes
        if len(generation.codes) >= needed:
            Token2Wav(loaded.model.token2wav, backend.speaker("default"), backend.chunks, seed=1).push(
                generation.codes[:needed])
            first_chunks.append((time.monotonic() - started) * 1000)
        baseline.append(end_of_turn + llm_ms + tts_ms)
        for key, value in (("end_of_turn", end_of_turn), ("llm", llm_ms), ("tts", tts_ms)):
            parts[key].append(value)
    vram = round(torch.cuda.max_memory_allocated() / 2**20, 1) if backend.loaded.device == "cuda" else None
    baseline_p50 = p50(baseline)
    return {
        "asr_rtf": round(float(np.median(asr_rtfs)), 3) if asr_rtfs else None,  # None: not transcribing
        "llm_prefill_tok_s": p50(prefill),
        "llm_decode_tok_s": p50(decode),
        "tts_first_chunk_ms_p50": p50(first_chunks),
        "baseline_eos_to_first_audio_ms_p50": baseline_p50,
        "baseline_eos_to_first_audio_ms_p95": p95(baseline),
        "baseline_parts": {key: p50(values) for key, values in parts.items()},
        "speedup_vs_baseline": round(baseline_p50 / streaming_p50, 2) if baseline_p50 and streaming_p50 else None,
        "first_audio_chunk_ms": p50(firsts),
        "rtf": round(float(np.median(rtfs)), 3) if rtfs else None,
        "vram_mb": vram,
    }


async def _stream(backend, request: ReplyRequest, stats: ReplyStats) -> tuple[float | None, float, float]:
    """(ms to the first speech chunk, seconds of speech, seconds it took) for one streamed reply."""
    session = backend.open_session()
    started = time.monotonic()
    first, samples = None, 0
    async for output in session.reply(request, stats):
        if isinstance(output, SpeechChunk) and output.audio.size:
            if first is None:
                first = (time.monotonic() - started) * 1000
            samples += output.audio.size
    return first, samples / PROTOCOL_RATE, time.monotonic() - started


class _Transcription(threading.Thread):
    """Whisper over one prompt, started now on its own thread (as the listener's runs beside the model)."""

    def __init__(self, asr, audio: np.ndarray):
        super().__init__(name="bench-asr", daemon=True)
        self.asr, self.audio = asr, resample(audio, PROTOCOL_RATE, SAMPLE_RATE)
        self.seconds = 0.0
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        self.asr.transcribe(self.audio)
        self.seconds = time.monotonic() - started

    def rtf(self) -> float:
        self.join()
        return self.seconds / (self.audio.size / SAMPLE_RATE)
