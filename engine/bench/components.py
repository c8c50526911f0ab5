"""Per-model figures, and the non-streaming baseline the streaming engine is compared with.

The baseline is the classic three-model pipeline on the same models: wait for the end of the turn,
transcribe the whole utterance (faster-whisper's standard 30 s window), generate the whole reply with
no KV-cache reuse, then synthesize all of it; the first sound comes only after all three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.bench.prompts import SpokenPrompt
from engine.bench.stats import p50
from engine.llm.prompt import build_messages
from engine.backends.base import ReplyRequest, Turn
from engine.realtime.session_config import DEFAULT_INSTRUCTIONS
from engine.speech.phrases import PhraseSplitter
from engine.turns.detector import ServerVadSettings, SpeechStopped, TurnDetector


@dataclass
class ComponentFigures:
    asr_rtf: float | None = None
    llm_prefill_tok_s: float | None = None
    llm_decode_tok_s: float | None = None
    tts_first_chunk_ms_p50: float | None = None
    baseline_eos_to_first_audio_ms: list[float] = field(default_factory=list)
    baseline_parts_ms: dict[str, float | None] = field(default_factory=dict)


def measure(backend, vad_model, prompts: list[SpokenPrompt], answers: list[str],
            silence_duration_ms: int) -> ComponentFigures:
    figures = ComponentFigures()
    asr_times, tts_firsts, prefill, decode = [], [], [], []
    parts: dict[str, list[float]] = {"end_of_turn": [], "asr": [], "llm": [], "tts": []}
    from faster_whisper import WhisperModel

    whole_window_asr = WhisperModel(str(backend.asr.model_dir), device="cpu", compute_type="int8",
                                    cpu_threads=backend.asr.threads)
    history: list[Turn] = []
    for prompt, answer in zip(prompts, answers):
        audio16 = resample(prompt.audio, PROTOCOL_RATE, 16_000)
        started = time.monotonic()
        backend.asr.transcribe(audio16)
        asr_times.append((time.monotonic() - started) / (audio16.size / 16_000))

        # Baseline: end of turn, whole transcription, whole reply, whole synthesis.
        end_of_turn = _end_of_turn_ms(vad_model, prompt.audio, silence_duration_ms)
        started = time.monotonic()
        segments, _ = whole_window_asr.transcribe(audio16, beam_size=1, language="en")
        text = " ".join(s.text.strip() for s in segments)
        asr_ms = (time.monotonic() - started) * 1000
        history.append(Turn("user", text))
        messages = build_messages(ReplyRequest(DEFAULT_INSTRUCTIONS, tuple(history)), 4096, 320)
        started = time.monotonic()
        reply = backend.llm.complete_uncached(messages, max_tokens=320)
        llm_ms = (time.monotonic() - started) * 1000
        history.append(Turn("assistant", reply.text))
        prefill.append(reply.stats.prefill_tok_s)
        decode.append(reply.stats.decode_tok_s)
        started = time.monotonic()
        if reply.text.strip():
            backend.tts.synthesize(reply.text)
        tts_ms = (time.monotonic() - started) * 1000
        for key, value in (("end_of_turn", end_of_turn), ("asr", asr_ms), ("llm", llm_ms), ("tts", tts_ms)):
            parts[key].append(value)
        figures.baseline_eos_to_first_audio_ms.append(round(end_of_turn + asr_ms + llm_ms + tts_ms, 1))

        first_phrase = _first_phrase(answer)
        if first_phrase:
            started = time.monotonic()
            backend.tts.synthesize(first_phrase)
            tts_firsts.append((time.monotonic() - started) * 1000)

    figures.asr_rtf = round(float(np.median(asr_times)), 4) if asr_times else None
    figures.llm_prefill_tok_s = p50([v for v in prefill if v])
    figures.llm_decode_tok_s = p50([v for v in decode if v])
    figures.tts_first_chunk_ms_p50 = p50(tts_firsts)
    figures.baseline_parts_ms = {f"{key}_ms_p50": p50(values) for key, values in parts.items()}
    return figures


def _end_of_turn_ms(vad_model, speech: np.ndarray, silence_duration_ms: int) -> float:
    """How long after the end of speech the same turn detector declares the turn over."""
    detector = TurnDetector(vad_model, ServerVadSettings(silence_duration_ms=silence_duration_ms))
    lead = np.zeros(int(0.4 * PROTOCOL_RATE), np.float32)
    audio = np.concatenate([lead, speech, np.zeros(3 * PROTOCOL_RATE, np.float32)])
    step = PROTOCOL_RATE // 50
    for offset in range(0, audio.size, step):
        for event in detector.feed(audio[offset:offset + step]):
            if isinstance(event, SpeechStopped):
                # the event fires once the chunk holding it has arrived
                arrival_ms = (offset + step) * 1000 / PROTOCOL_RATE
                return max(0.0, arrival_ms - (lead.size + speech.size) * 1000 / PROTOCOL_RATE)
    return float("nan")


def _first_phrase(answer: str) -> str:
    splitter = PhraseSplitter()
    phrases = splitter.push(answer) + splitter.flush()
    return phrases[0] if phrases else ""
