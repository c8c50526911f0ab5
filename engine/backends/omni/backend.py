"""The native omni backend: Qwen2.5-Omni hears the user's audio and sees screenshots, and speaks itself.

Per reply two threads run: the LM thread (thinker and talker, step by step) and the voice thread
(token2wav on chunks). The LM thread hands codec tokens to the voice thread as they are made; the voice
thread sends each chunk of audio to the event loop the moment it exists. Cancelling sets one flag that
both threads read between steps, so no step starts after a cancel. One model serves every session: a
lock lets one reply generate at a time (a second session's reply waits rather than halving both).
The user's words are transcribed beside all this, by Whisper on its own thread (transcripts.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable

import torch

from engine.backends.base import (
    Backend,
    BackendSession,
    Listener,
    ReplyOutput,
    ReplyRequest,
    ReplyStats,
    ScreenImage,
    SpeechChunk,
    TextDelta,
    drain_outbox,
)
from engine.backends.omni.conversation_cache import ConversationCache
from engine.backends.omni.generation import CodecToken, OmniGeneration, Sampling, TextToken, prefill
from engine.backends.omni.loading import LoadedOmni, load
from engine.backends.omni.settings import OmniSettings
from engine.backends.omni.prompt import build_prompt
from engine.backends.omni.spoken_text import SpokenText
from engine.backends.omni.token2wav import ChunkSettings, Token2Wav
from engine.backends.omni.transcripts import AudioOnlyListener, TranscribingListener, load_asr
from engine.models.store import ModelStore
from engine.runtime import inference_threads

log = logging.getLogger(__name__)


class OmniBackend(Backend):
    name = "omni"

    def __init__(self, settings: OmniSettings = OmniSettings(), store: ModelStore | None = None,
                 chunks: ChunkSettings | None = None):
        torch.set_num_threads(settings.threads or inference_threads())
        self.settings = settings
        self.loaded: LoadedOmni = load(settings, store)
        self.model = f"confide-omni/{self.loaded.description}"
        self.chunks = chunks or ChunkSettings()
        self.lm_lock = threading.Lock()
        self.voice_lock = threading.Lock()
        self._seed = settings.seed if settings.seed is not None else int(time.time_ns() % 2**31)
        self._closed = threading.Event()
        self.last_prompt = None
        self.last_speech: tuple[list[int], int] | None = None
        self.asr = load_asr(settings, store)  # None: no input transcripts (off, or Whisper not on disk)
        log.info("omni backend ready in %.1f s: %s", self.loaded.load_seconds, self.model)

    def open_session(self) -> OmniSession:
        return OmniSession(self)

    def warm_up(self) -> None:
        """One short spoken reply, so kernels and allocator pools exist before the first real turn."""
        request = ReplyRequest("", (), speak=True, max_output_tokens=3)
        run = _ReplyRun(self, request, ReplyStats(), None)
        run.run_inline(max_codes=4 * self._block_codes())
        if self.asr is not None:
            self.asr.warm_up()

    def next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def speaker(self, voice: str) -> dict:
        speakers = self.loaded.model.speaker_map
        for name in speakers:
            if name.lower() == (voice or "").lower():
                return speakers[name]
        return speakers[self.settings.speaker]

    def max_codes(self) -> int:
        """The settings' speech cap in codec tokens (50 a second for the real model)."""
        t2w = self.loaded.model.token2wav
        samples_per_code = t2w.code2wav_dit_model.repeats * math.prod(t2w.code2wav_bigvgan_model.config.upsample_rates)
        return max(1, int(self.settings.max_speech_s * 24_000 / samples_per_code))

    def _block_codes(self) -> int:
        dit = self.loaded.model.token2wav.code2wav_dit_model
        return dit.block_size // dit.repeats

    def close(self) -> None:
        self._closed.set()
        with self.lm_lock, self.voice_lock:  # running steps finish first; no reply starts after this
            pass


class OmniSession(BackendSession):
    replies_need_transcripts = False  # the thinker hears the user's audio; Whisper's text follows beside it

    def __init__(self, backend: OmniBackend):
        self.backend = backend
        self.cache = ConversationCache()  # used under the backend's LM lock only
        self._prefill_lock = threading.Lock()
        self._prefill_next: ReplyRequest | None = None
        self._prefill_thread: threading.Thread | None = None

    def prepare(self, context: ReplyRequest) -> None:
        self._prefill_later(context)  # e.g. the system prompt, before anyone speaks

    def listen(self, context: ReplyRequest, on_partial: Callable[[str], None] | None = None) -> Listener:
        self._prefill_later(context)  # the history, while the user speaks: the reply then runs only their turn
        if self.backend.asr is None:
            return AudioOnlyListener()
        return TranscribingListener(self.backend.asr, on_partial)

    def _prefill_later(self, context: ReplyRequest) -> None:
        with self._prefill_lock:
            self._prefill_next = context
            if self._prefill_thread is None or not self._prefill_thread.is_alive():
                self._prefill_thread = threading.Thread(target=self._prefill, name="omni-prefill", daemon=True)
                self._prefill_thread.start()

    def _prefill(self) -> None:
        backend = self.backend
        while True:
            with self._prefill_lock:
                context, self._prefill_next = self._prefill_next, None
            if context is None or backend._closed.is_set():
                return
            try:
                with backend.lm_lock:
                    loaded = backend.loaded
                    inputs = build_prompt(context, loaded.processors, backend.settings.max_prompt_tokens)
                    started = time.monotonic()
                    cached = prefill(loaded.model, inputs.to(loaded.device, loaded.dtype), self.cache, context.speak)
                    log.debug("omni prefill of %d tokens (%d cached) took %.0f ms", inputs.counts["tokens"] - cached,
                              cached, (time.monotonic() - started) * 1000)
            except Exception:
                log.exception("omni prefill failed (harmless: the reply will prefill instead)")
                self.cache.reset()

    async def read_screen(self, image: bytes) -> ScreenImage:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(image)) as picture:
                picture.verify()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ValueError(f"the image could not be read: {error}") from error
        return ScreenImage(image)  # the thinker sees the picture itself; no OCR pass is needed

    async def reply(self, request: ReplyRequest, stats: ReplyStats | None = None) -> AsyncIterator[ReplyOutput]:
        last = request.turns[-1] if request.turns else None
        if last is not None and last.role == "user" and not last.text.strip() and not last.images and (
                last.audio is None or not last.audio.size):
            return
        with self._prefill_lock:
            self._prefill_next = None  # the reply prefills what it needs; an older context would only delay it
        run = _ReplyRun(self.backend, request, stats or ReplyStats(), asyncio.get_running_loop(), self.cache)
        run.start()
        try:
            async for output in run.outputs():
                yield output
        finally:
            run.stop()


class _ReplyRun:
    _END = object()

    def __init__(self, backend: OmniBackend, request: ReplyRequest, stats: ReplyStats,
                 loop: asyncio.AbstractEventLoop | None, cache: ConversationCache | None = None):
        self.backend, self.request, self.stats, self.loop = backend, request, stats, loop
        self.cache = cache or ConversationCache()
        self.stopped = threading.Event()
        self.outbox: asyncio.Queue | None = asyncio.Queue() if loop else None
        self.codes: queue.Queue = queue.Queue()
        self.text = SpokenText(backend.loaded.processors.tokenizer)
        self.inline_outputs: list[ReplyOutput] = []

    # --- threads ------------------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._generate, name="omni-lm", daemon=True).start()
        if self.request.speak:
            threading.Thread(target=self._speak, name="omni-voice", daemon=True).start()

    def run_inline(self, max_codes: int | None = None) -> list[ReplyOutput]:
        """Both stages on this thread, one after the other (warm-up and the benchmark's component figures)."""
        self._generate(max_codes)
        if self.request.speak:
            self._speak()
        return self.inline_outputs

    def stop(self) -> None:
        self.stopped.set()
        self.codes.put(None)

    def outputs(self) -> AsyncIterator[ReplyOutput]:
        return drain_outbox(self.outbox, self._END)

    def _deliver(self, output) -> None:
        if self.loop is None:
            if output is not self._END and not isinstance(output, BaseException):
                self.inline_outputs.append(output)
            elif isinstance(output, BaseException):
                raise output
            return
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, output)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.stop()

    def _generate(self, max_codes: int | None = None) -> None:
        backend, request, stats = self.backend, self.request, self.stats
        loaded, settings = backend.loaded, backend.settings
        try:
            with backend.lm_lock:
                if self.stopped.is_set() or backend._closed.is_set():
                    return
                stats.mark("llm_request")
                inputs = build_prompt(request, loaded.processors, settings.max_prompt_tokens)
                backend.last_prompt = inputs  # what the model was shown, for the log and the tests
                log.debug("omni prompt: %s", inputs.counts)  # cached tokens are in the reply trace
                inputs = inputs.to(loaded.device, loaded.dtype)
                temperature = request.temperature if request.temperature is not None else settings.temperature
                generation = OmniGeneration(
                    loaded.model, inputs, backend.speaker(request.voice) if request.speak else None,
                    eos_ids=loaded.eos_ids,
                    max_text_tokens=min(request.max_output_tokens or settings.max_reply_tokens,
                                        settings.max_reply_tokens) + 1,
                    max_codes=max_codes or backend.max_codes(), codes_per_text_token=settings.codes_per_text_token,
                    thinker_sampling=Sampling(temperature=temperature, top_p=0.9),
                    seed=backend.next_seed(), cache=self.cache)
                stats.prompt_tokens = generation.prompt_tokens
                started = time.monotonic()
                first_token_at = None
                for step in generation.steps():
                    if self.stopped.is_set():
                        return  # cancelled: no further step runs
                    if isinstance(step, TextToken):
                        if first_token_at is None:
                            first_token_at = time.monotonic()
                            stats.mark("first_token")
                        fresh = self.text.add(step.id)
                        if fresh and not request.speak:
                            self._deliver(TextDelta(fresh))
                    elif isinstance(step, CodecToken):
                        stats.mark("first_code")
                        self.codes.put(step.id)
                ended = time.monotonic()
                stats.cached_tokens = generation.cached_tokens
                stats.output_tokens = len(generation.text_tokens)
                if first_token_at is not None:
                    stats.prefill_tok_s = round((generation.prompt_tokens - generation.cached_tokens) /
                                                max(1e-6, first_token_at - started), 1)
                    if len(generation.text_tokens) > 1:
                        stats.decode_tok_s = round((len(generation.text_tokens) - 1) /
                                                   max(1e-6, ended - first_token_at), 1)
                self.text.finish()  # text-only replies already went out token by token
        except Exception as error:  # reported to the session as a failed response
            log.exception("omni generation failed")
            self.cache.reset()  # a step that failed halfway may have left the caches out of step
            self._deliver(error)
            self.stop()
        finally:
            self.codes.put(None)
            if not request.speak:
                self._deliver(self._END)

    def _speak(self) -> None:
        backend = self.backend
        try:
            with backend.voice_lock:
                seed = backend.next_seed()
                voice = Token2Wav(backend.loaded.model.token2wav, backend.speaker(self.request.voice), backend.chunks,
                                  seed=seed)
                samples = 0
                while not self.stopped.is_set():
                    code = self.codes.get()
                    if code is None:
                        break
                    pending = [code]
                    while not self.codes.empty():  # take every code made meanwhile
                        more = self.codes.get_nowait()
                        if more is None:
                            self.codes.put(None)
                            break
                        pending.append(more)
                    voice.add(pending)
                    while not self.stopped.is_set() and (audio := voice.next_chunk()) is not None:
                        samples += audio.size
                        self.stats.mark("first_audio")
                        self._deliver(SpeechChunk(audio, self.text.spoken_until(samples / 24_000)))
                if self.stopped.is_set():
                    return
                audio = voice.finish()
                backend.last_speech = (voice.codes, seed)  # the reply's codes and noise seed, for the tests
                self.text.finish()
                if audio.size or self.text.has_rest():
                    self.stats.mark("first_audio")
                    self._deliver(SpeechChunk(audio, self.text.take_rest()))
        except Exception as error:
            log.exception("omni speech failed")
            self._deliver(error)
        finally:
            self._deliver(self._END)
