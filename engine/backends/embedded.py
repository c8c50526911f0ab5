"""The embedded default: a streaming cascade of small local models that install from PyPI alone.

Whisper tiny.en hears the user while they speak; a Qwen2.5 GGUF (llama.cpp) writes the reply with its
KV cache kept per conversation and pre-filled with the partial transcript; Piper speaks it phrase by
phrase as the tokens arrive; a fast OCR pass reads screenshots the moment they arrive.
Three threads run one reply: the LLM decoding, Piper speaking the previous phrase, and the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

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
    Turn,
    WordTiming,
    drain_outbox,
)
from engine.llm.chat_model import ChatModel
from engine.llm.prompt import ForwardWindow
from engine.models.store import ModelStore
from engine.runtime import inference_threads
from engine.speech.asr import UtteranceTranscriber, WhisperAsr
from engine.speech.phrases import PhraseSplitter
from engine.speech.tts import PiperTts
from engine.turns.vad import SileroVadModel
from engine.vision.screen_image import ScreenImageError
from engine.vision.screen_reader import ScreenReader

log = logging.getLogger(__name__)

DEFAULT_LLM = "qwen2.5-coder-0.5b-instruct"
REPLY_TOKEN_CAP = 320  # a spoken answer; longer ones are cut rather than monologued
CONTEXT_TOKENS = 4096
# What the model reads of the conversation: the system text, screen text and the newest turns that fit (about
# fifteen exchanges; the stored conversation and the app's history keep every turn). Not the whole context:
# every token of prompt slows each turn's prefill and decoding, and the soak's hour of conversation, its
# prompt grown from ~1.7k tokens in the first ten minutes to ~3.2k in the last, answered 1.6x slower then
# (first delta p50 1046 → 1692 ms).
PROMPT_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class EmbeddedSettings:
    llm: str = DEFAULT_LLM
    asr: str = "whisper-tiny.en"
    voice: str = "piper-joe-medium"
    ocr: str = "ppocr-v6-small"
    threads: int = 0  # 0 = cores - 1
    temperature: float = 0.3
    seed: int | None = None
    slots: int = 4


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self, settings: EmbeddedSettings = EmbeddedSettings(), store: ModelStore | None = None,
                 vad: SileroVadModel | None = None):
        store = store or ModelStore()
        vad = vad or SileroVadModel(store.resolve("silero-vad").file())
        threads = settings.threads or inference_threads()
        self.settings = settings
        self.model = f"confide-embedded/{settings.llm}"
        started = time.monotonic()
        paths = {key: store.resolve(model_id) for key, model_id in
                 (("asr", settings.asr), ("llm", settings.llm), ("tts", settings.voice), ("ocr", settings.ocr))}
        # Loading is mostly file I/O and graph setup: overlap it.
        with ThreadPoolExecutor(max_workers=4) as pool:
            asr = pool.submit(WhisperAsr, paths["asr"].directory, threads, vad=vad)
            llm = pool.submit(ChatModel, paths["llm"].file(), threads, CONTEXT_TOKENS, settings.slots)
            tts = pool.submit(PiperTts, paths["tts"].file(paths["tts"].spec.files[0].name), threads)
            ocr = pool.submit(ScreenReader, paths["ocr"], threads)  # loads its models on warm_up
            self.asr, self.llm, self.tts, self.screen_reader = asr.result(), llm.result(), tts.result(), ocr.result()
        self.load_seconds = time.monotonic() - started
        # Screens are read one at a time (each takes a core for ~1 s): a burst queues instead of thrashing,
        # and waiting for a transcript never queues behind a screenshot.
        self._screen_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="screen-reader")
        self.workers = _Workers()
        log.info("embedded backend ready in %.1f s (%d threads per model)", self.load_seconds, threads)

    def warm_up(self) -> None:
        self.tts.warm_up()
        self.asr.warm_up()
        self.screen_reader.warm_up()

    def open_session(self) -> EmbeddedSession:
        return EmbeddedSession(self)

    def close(self) -> None:
        """Stop every model thread and free the models. Blocks (briefly): call it off the event loop.

        A model call cannot be interrupted mid-step, and tearing the LLM down under one crashes the
        process, so running calls are asked to stop and waited for first."""
        self.workers.stop_all()
        self._screen_executor.shutdown(wait=True, cancel_futures=True)
        self.llm.close()

    async def read_screen_text(self, image: bytes) -> str:
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._screen_executor, self.screen_reader.read, image)).text


class EmbeddedSession(BackendSession):
    def __init__(self, backend: EmbeddedBackend):
        self.backend = backend
        self.slot = backend.llm.claim_slot()
        self._prefill = _Prefiller(backend.llm, self.slot, backend.workers)
        self._window = ForwardWindow()

    def prepare(self, context: ReplyRequest) -> None:
        self._prefill.request(self.messages(context))  # e.g. the system prompt, before anyone speaks

    def listen(self, context: ReplyRequest, on_partial: Callable[[str], None] | None = None) -> Listener:
        return _CascadeListener(self, context, on_partial)

    async def read_screen(self, image: bytes) -> ScreenImage:
        try:
            return ScreenImage(image, await self.backend.read_screen_text(image))
        except ScreenImageError as error:
            raise ValueError(str(error)) from error

    def messages(self, request: ReplyRequest) -> list[dict]:
        reply_tokens = self._reply_tokens(request)
        return self._window.messages(request, min(CONTEXT_TOKENS, PROMPT_TOKENS + reply_tokens), reply_tokens)

    @staticmethod
    def _reply_tokens(request: ReplyRequest) -> int:
        return min(request.max_output_tokens or REPLY_TOKEN_CAP, REPLY_TOKEN_CAP)

    async def reply(self, request: ReplyRequest, stats: ReplyStats | None = None) -> AsyncIterator[ReplyOutput]:
        stats = stats or ReplyStats()
        last = request.turns[-1] if request.turns else None
        if last is not None and last.role == "user" and not last.text.strip() and not last.images:
            return  # nothing intelligible was said: stay quiet rather than answer noise
        self._prefill.cancel_pending()
        run = _ReplyThreads(self, request, stats, asyncio.get_running_loop())
        try:
            async for output in run.outputs():
                yield output
        finally:
            run.stop()

    def close(self) -> None:
        self._prefill.cancel_pending()


class _ReplyThreads:
    """LLM tokens → phrases → Piper audio, on two threads, delivered to the event loop."""

    _END = object()

    def __init__(self, session: EmbeddedSession, request: ReplyRequest, stats: ReplyStats,
                 loop: asyncio.AbstractEventLoop):
        self.session, self.request, self.stats, self.loop = session, request, stats, loop
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.phrases: queue.Queue = queue.Queue()
        self.stopped = threading.Event()
        workers = session.backend.workers
        started = workers.start(self._generate, "reply-llm", self.stop)
        if started and request.speak:
            started = workers.start(self._speak, "reply-tts", self.stop)
        if not started:
            self.stop()
            self.outbox.put_nowait(RuntimeError("the engine is shutting down"))

    def stop(self) -> None:
        self.stopped.set()
        self.phrases.put(None)

    def outputs(self) -> AsyncIterator[ReplyOutput]:
        return drain_outbox(self.outbox, self._END)

    def _deliver(self, output) -> None:
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, output)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.stop()

    def _generate(self) -> None:
        backend = self.session.backend
        splitter = PhraseSplitter()

        def on_text(fragment: str) -> None:
            self.stats.mark("first_token")
            if self.request.speak:
                for phrase in splitter.push(fragment):
                    self.phrases.put(phrase)
            else:
                self._deliver(TextDelta(fragment))

        try:
            self.session._prefill.settle()
            self.stats.mark("llm_request")
            result = backend.llm.stream(
                self.session.messages(self.request),
                slot=self.session.slot,
                on_text=on_text,
                should_stop=self.stopped.is_set,
                max_tokens=self.session._reply_tokens(self.request),
                temperature=self.request.temperature if self.request.temperature is not None
                else backend.settings.temperature,
                seed=backend.settings.seed,
            )
            self.stats.prompt_tokens, self.stats.cached_tokens = result.prompt_tokens, result.cached_tokens
            self.stats.output_tokens = result.output_tokens
            self.stats.prefill_tok_s, self.stats.decode_tok_s = result.prefill_tok_s, result.decode_tok_s
            if self.request.speak and not self.stopped.is_set():
                for phrase in splitter.flush():
                    self.phrases.put(phrase)
        except Exception as error:  # reported to the session as a failed response
            log.exception("generation failed")
            self._deliver(error)
        finally:
            if self.request.speak:
                self.phrases.put(None)
            else:
                self._deliver(self._END)

    def _speak(self) -> None:
        tts = self.session.backend.tts
        try:
            while not self.stopped.is_set():
                phrase = self.phrases.get()
                if phrase is None or self.stopped.is_set():
                    break
                self.stats.mark("first_phrase")
                spoken = tts.synthesize(phrase, self.request.speed)
                self.stats.mark("first_audio")
                words = tuple(WordTiming(w.text, w.start_ms, w.end_ms) for w in spoken.words)
                self._deliver(SpeechChunk(spoken.audio, spoken.text, words))
        except Exception as error:
            log.exception("speech synthesis failed")
            self._deliver(error)
        finally:
            self._deliver(self._END)


class _CascadeListener(Listener):
    """Transcribes while the user speaks, and pre-fills the LLM with each new partial transcript."""

    def __init__(self, session: EmbeddedSession, context: ReplyRequest,
                 on_partial: Callable[[str], None] | None):
        self._session = session
        self._context = context
        self._on_partial = on_partial
        self._closed = False
        self._heard = ""  # the newest partial transcript
        # Frequent partials keep the LLM cache close behind the speaker: at the end of the turn only the
        # last word or two and the reply header are left to prefill (~30 ms a token at this batch size).
        self._transcriber = UtteranceTranscriber(session.backend.asr, on_partial=self._partial,
                                                 partial_interval_s=0.3)
        self._prefill_heard()  # history and instructions: cached before the words

    def _partial(self, text: str) -> None:
        if self._closed:
            return  # a pass that finished after the turn ended: its prompt is stale (see _Prefiller)
        if self._on_partial:
            self._on_partial(text)
        self._heard = text
        self._prefill_heard()

    def context_changed(self, context: ReplyRequest) -> None:
        # A screenshot's text, read while the question is spoken (~360 tokens: ~5 s to prefill on one
        # core), is prefilled then rather than after the question.
        self._context = context
        if not self._closed:
            self._prefill_heard()

    def _prefill_heard(self) -> None:
        # The context as the reply will see it (its output cap too, which sets the history's budget).
        turns = (*self._context.turns, Turn("user", self._heard)) if self._heard else self._context.turns
        self._session._prefill.request(self._session.messages(dataclasses.replace(self._context, turns=turns)))

    def feed(self, audio: np.ndarray) -> None:
        self._transcriber.feed(audio)

    async def transcript(self) -> str:
        return await asyncio.to_thread(self._transcriber.transcript)  # waits; the work is on the ASR thread

    def close(self) -> None:
        self._closed = True
        self._transcriber.close()  # returns at once; the worker drops its pass at the next step


class _Workers:
    """The model threads alive right now, so shutdown can stop them and wait before freeing models."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[threading.Thread, Callable[[], None]] = {}
        self.closed = False

    def start(self, target: Callable[[], None], name: str, stop: Callable[[], None]) -> threading.Thread | None:
        def run() -> None:
            try:
                target()
            finally:
                with self._lock:
                    self._running.pop(thread, None)

        with self._lock:
            if self.closed:
                return None
            thread = threading.Thread(target=run, name=name, daemon=True)
            self._running[thread] = stop
            thread.start()
        return thread

    def stop_all(self, timeout_s: float = 20.0) -> None:
        with self._lock:
            self.closed = True
            running = dict(self._running)
        for stop in running.values():
            stop()
        for thread in running:
            thread.join(timeout_s)


class _Prefiller:
    """Keeps one conversation's KV slot warm in the background; only the newest request matters.

    A reply waits for the prefill that is running (settle). In the soak a prefill begun 0.2 s before a
    reply still reached the slot after it, its prompt by then older than the slot's cache: 1,230 tokens
    prefilled again in 20.7 s, and the next answer waited behind it. Run first, it costs its few new
    tokens and the reply extends it."""

    def __init__(self, llm: ChatModel, slot: int, workers: _Workers):
        self._llm, self._slot, self._workers = llm, slot, workers
        self._latest: list[dict] | None = None
        self._wake = threading.Lock()  # guards _latest and _draining
        self._draining = False  # a worker is taking requests
        self._running = threading.Lock()  # held while a request is taken and prefilled

    def request(self, messages: list[dict]) -> None:
        with self._wake:
            self._latest = messages
            if self._draining:
                return
            self._draining = True
        if self._workers.start(self._run, "prefill", self.cancel_pending) is None:
            with self._wake:
                self._draining = False

    def cancel_pending(self) -> None:
        with self._wake:
            self._latest = None

    def settle(self) -> None:
        """Wait until no prefill is running."""
        with self._running:
            pass

    def _run(self) -> None:
        while True:
            with self._running:
                with self._wake:
                    messages, self._latest = self._latest, None
                    if messages is None:
                        self._draining = False
                        return
                self._prefill(messages)

    def _prefill(self, messages: list[dict]) -> None:
        try:
            started = time.monotonic()
            stats = self._llm.prefill(messages, slot=self._slot)
            log.debug("prefill of %d tokens (%d cached) took %.0f ms", stats.prompt_tokens, stats.cached_tokens,
                      (time.monotonic() - started) * 1000)
        except Exception:
            log.exception("prefill failed (harmless: the reply will prefill instead)")
