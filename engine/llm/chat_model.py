"""A GGUF chat model run in-process by llama.cpp's server core (xllamacpp), tokens streamed.

Each conversation pins one KV-cache slot, and every request sets `cache_prompt`, so a new turn only
prefills the tokens that differ from the slot's previous prompt (llama.cpp keeps the common prefix).

A long conversation outgrows the context: the prompt then keeps only the newest turns (engine/llm/prompt.py),
so the oldest turn leaves the *start* of the history and the common prefix shrinks to the system prompt.
Without more, every later turn would prefill the whole history again (~3,700 tokens: ~1 minute on one
core). llama.cpp's cache reuse finds the rest of the old prompt further along the cache and shifts it into
place (KV shifting), so a sliding window costs only its new tokens. llama.cpp's host-memory prompt cache
is off: it saved a copy of the slot's whole KV state each time the prompt kept less than half of it, which
a sliding history does every turn (~45 MB a turn for the default model, up to its 8 GiB default), and each
conversation keeps its own slot anyway.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


# Shortest run of cached tokens moved into place instead of prefilled again: a turn or two of speech is
# longer, and shorter runs are not worth a shift.
CACHE_REUSE_MIN_TOKENS = 32


class GenerationError(RuntimeError):
    pass


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens prefilled for this request (not counting the reused cache)
    cached_tokens: int = 0  # prompt tokens reused from the slot's cache
    prompt_ms: float = 0.0
    output_tokens: int = 0
    decode_ms: float = 0.0
    stopped: bool = False  # the caller asked to stop

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prompt_ms * 1000 if self.prompt_ms > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.output_tokens / self.decode_ms * 1000 if self.decode_ms > 0 else 0.0


Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class Completion:
    text: str
    stats: GenerationStats


def _close_http_side(params) -> str:
    """xllamacpp always starts llama.cpp's HTTP server beside the in-process API; by default that is a
    TCP port on loopback with no key and CORS open to every origin, which would let any local process
    or web page read the conversation (/slots) or use the model. Bind it to a Unix socket in a private
    0700 folder instead, require a random key nobody is told, and turn off the endpoints that leak."""
    folder = tempfile.mkdtemp(prefix="confide-llm-")
    os.chmod(folder, 0o700)
    params.hostnames = [os.path.join(folder, "llm.sock")]
    params.api_keys = [secrets.token_hex(32)]
    params.cors_origins = ""
    params.endpoint_slots = False
    params.endpoint_props = False
    params.endpoint_metrics = False
    return folder


class ChatModel:
    def __init__(
        self,
        gguf_path: Path,
        threads: int,
        context_tokens: int = 4096,
        slots: int = 4,
        batch_threads: int | None = None,
    ):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path)
        params.n_parallel = slots
        params.n_ctx = context_tokens * slots  # llama.cpp splits the context between the slots
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = batch_threads or threads
        params.warmup = True
        params.n_cache_reuse = CACHE_REUSE_MIN_TOKENS  # a sliding history is shifted, not prefilled again
        params.cache_ram_mib = 0  # no copies of old prompts' KV states in memory (see the module docstring)
        params.verbosity = 1  # warnings and errors only; llama.cpp's info lines would flood the log
        socket_folder = _close_http_side(params)
        started = time.monotonic()
        self._server = xllamacpp.Server(params)
        weakref.finalize(self, shutil.rmtree, socket_folder, True)
        self.load_seconds = time.monotonic() - started
        self.path = Path(gguf_path)
        self.context_tokens = context_tokens
        self._slot_ids = itertools.cycle(range(slots))
        self._slot_lock = threading.Lock()
        log.info("loaded %s in %.1f s (%d slots, %d threads)", self.path.name, self.load_seconds, slots, threads)

    def close(self) -> None:
        """Free the model. Only once no request is running: llama.cpp crashes if freed under one."""
        server, self._server = self._server, None
        del server

    def claim_slot(self) -> int:
        """A KV slot for one conversation. With more conversations than slots they share (still correct)."""
        with self._slot_lock:
            return next(self._slot_ids)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        slot: int,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
        max_tokens: int = 256,
        temperature: float = 0.3,
        seed: int | None = None,
    ) -> GenerationStats:
        """Generate a reply, calling `on_text` with each text fragment; blocks until done or stopped.

        `should_stop` is polled after every token, so a cancel takes effect within one decode step.
        """
        stats = GenerationStats()
        errors: list[str] = []

        def on_chunk(chunk: dict) -> bool:
            if "error" in chunk or chunk.get("code"):
                errors.append(str(chunk.get("error") or chunk.get("message") or chunk))
                return True
            for choice in chunk.get("choices", ()):
                fragment = (choice.get("delta") or {}).get("content")
                if fragment:
                    on_text(fragment)
            timings = chunk.get("timings")
            if timings:
                stats.prompt_tokens = int(timings.get("prompt_n") or 0)
                stats.cached_tokens = int(timings.get("cache_n") or 0)
                stats.prompt_ms = float(timings.get("prompt_ms") or 0.0)
                stats.output_tokens = int(timings.get("predicted_n") or 0)
                stats.decode_ms = float(timings.get("predicted_ms") or 0.0)
            if should_stop():
                stats.stopped = True
                return True
            return False

        request = self._request(messages, slot, max_tokens, temperature, seed)
        request["stream"] = True
        request["timings_per_token"] = True
        self._server.handle_chat_completions(request, on_chunk)
        if errors and not stats.stopped:
            raise GenerationError(errors[0])
        return stats

    def prefill(self, messages: Sequence[Message], *, slot: int) -> GenerationStats:
        """Bring the slot's KV cache up to `messages` (plus the assistant header) without replying.

        Used while the user is still talking, so the final request only prefills what changed.
        """
        reply = self._server.handle_chat_completions(self._request(messages, slot, 0, 0.0, 0))
        if "error" in reply:
            raise GenerationError(str(reply["error"]))
        timings = reply.get("timings") or {}
        return GenerationStats(
            prompt_tokens=int(timings.get("prompt_n") or 0),
            cached_tokens=int(timings.get("cache_n") or 0),
            prompt_ms=float(timings.get("prompt_ms") or 0.0),
        )

    def complete_uncached(self, messages: Sequence[Message], *, max_tokens: int = 256, slot: int = 0) -> Completion:
        """The whole reply at once, prefilling the whole prompt: how a non-streaming pipeline runs."""
        request = self._request(messages, slot, max_tokens, 0.0, 0)
        request["cache_prompt"] = False
        reply = self._server.handle_chat_completions(request)
        if "error" in reply:
            raise GenerationError(str(reply["error"]))
        timings = reply.get("timings") or {}
        stats = GenerationStats(
            prompt_tokens=int(timings.get("prompt_n") or 0),
            prompt_ms=float(timings.get("prompt_ms") or 0.0),
            output_tokens=int(timings.get("predicted_n") or 0),
            decode_ms=float(timings.get("predicted_ms") or 0.0),
        )
        return Completion(reply["choices"][0]["message"].get("content") or "", stats)

    @staticmethod
    def _request(messages, slot, max_tokens, temperature, seed) -> dict:
        request = {
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": 0.9,
            "cache_prompt": True,
            "id_slot": slot,
        }
        if seed is not None:
            request["seed"] = seed
        return request
