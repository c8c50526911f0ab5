"""The user's words as text, beside the audio the thinker hears.

The thinker hears the user's audio itself and needs no transcript for the turn it answers. The text is
for the rest: the client's live transcript and saved history (the session's usual transcription events),
and the turns whose audio the conversation has forgotten, which reach the thinker as text. It comes from
the embedded backend's Whisper, transcribing while the user speaks on its own thread (CPU, beside the
thinker's prefill of the history), so the turn's end finds at most the last pass to run.

No reply waits for it: the session builds the reply from the audio at once (OmniSession's
`replies_need_transcripts` is False), and the transcription event follows when Whisper is done.

Whisper is used only when it is already on disk: nothing downloads at run time. Without it the backend
says so once and the user's items carry empty transcripts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from engine.backends.base import Listener
from engine.backends.omni.settings import OmniSettings
from engine.models.store import ModelFileError, ModelStore
from engine.runtime import inference_threads
from engine.speech.asr import UtteranceTranscriber, WhisperAsr
from engine.turns.vad import SileroVadModel

log = logging.getLogger(__name__)

# Partials (the client's live transcript) at most this often; each pass re-reads the speech so far on one
# core, and at most half the time, so the history prefill running meanwhile keeps the other.
PARTIAL_INTERVAL_S = 0.5


def load_asr(settings: OmniSettings, store: ModelStore | None) -> WhisperAsr | None:
    """Whisper when transcripts are wanted and its files are on disk; else None."""
    if not settings.transcribe:
        log.info("omni: input transcription is off (--no-omni-transcribe): user items carry no transcript")
        return None
    store = store or ModelStore()
    try:
        asr_files = store.resolve(settings.asr)  # never downloads
        vad_file = store.resolve("silero-vad").file()
    except ModelFileError as error:
        log.warning("omni: no input transcripts, the user's turns carry audio only (%s)", error)
        return None
    return WhisperAsr(asr_files.directory, settings.threads or inference_threads(), vad=SileroVadModel(vad_file))


class TranscribingListener(Listener):
    """Whisper re-reads the utterance while it is spoken (partials go to `on_partial`); `transcript()`
    waits only for the pass that covers everything fed."""

    def __init__(self, asr: WhisperAsr, on_partial: Callable[[str], None] | None = None):
        self._transcriber = UtteranceTranscriber(asr, on_partial=on_partial, partial_interval_s=PARTIAL_INTERVAL_S)

    def feed(self, audio: np.ndarray) -> None:
        self._transcriber.feed(audio)

    async def transcript(self) -> str:
        return await asyncio.to_thread(self._transcriber.transcript)  # the work is on the transcriber's thread

    def close(self) -> None:
        self._transcriber.close()


class AudioOnlyListener(Listener):
    """Transcription off or unavailable: the thinker hears the committed audio itself (it reaches reply()
    in the turn), and the user's item carries an empty transcript."""

    def feed(self, audio: np.ndarray) -> None:
        pass

    async def transcript(self) -> str:
        return ""

    def close(self) -> None:
        pass
