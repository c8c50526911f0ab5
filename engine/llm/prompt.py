"""Turn a conversation into chat messages for a text model, within its context budget.

The rendering of earlier turns never changes between requests, so the KV cache of a slot stays valid
for everything but the newest turn.
"""

from __future__ import annotations

import threading

from engine.backends.base import ReplyRequest, Turn
from engine.llm.chat_model import Message

CHARS_PER_TOKEN = 3.5  # conservative for English with Qwen/SmolLM tokenizers


def screen_context(texts: list[str]) -> str:
    shown = "\n\n".join(t.strip() for t in texts if t and t.strip()) or "(no readable text was found)"
    return ("[The user shared a screenshot. Text read from it, top to bottom:]\n" + shown +
            "\n[End of screen text.]")


def render_turn(turn: Turn) -> Message:
    content = turn.text.strip()
    screens = [image.text or "" for image in turn.images]
    if screens:
        content = screen_context(screens) + ("\n\n" + content if content else "")
    return {"role": turn.role if turn.role in ("user", "assistant") else "system", "content": content}


def build_messages(request: ReplyRequest, context_tokens: int, reply_tokens: int) -> list[Message]:
    system, history = _render(request)
    return [system, *history[_window_start(system, history, context_tokens, reply_tokens):]]


class ForwardWindow:
    """build_messages for one KV slot, whose window of history only ever slides forward.

    llama.cpp's cache reuse shifts a window that slid forward into place (only its new tokens are
    prefilled), but a prompt that keeps an older turn than the slot's cache starts differing right after
    the system prompt and is prefilled whole: ~1,200 tokens, 20 s on one core. Without this a shorter
    newest turn brings an older one back: the partial transcript of a screen question against its reply
    with the screen's text, or a reply truncated to what was heard. Such a prompt starts where the last
    one did instead, as long as the history up to there is unchanged (else the window starts afresh).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # prefills are built on the speech thread, replies on their own
        self._start = 0
        self._first: Message | None = None  # history[_start] when the last prompt was built

    def messages(self, request: ReplyRequest, context_tokens: int, reply_tokens: int) -> list[Message]:
        system, history = _render(request)
        start = _window_start(system, history, context_tokens, reply_tokens)
        with self._lock:
            if start < self._start < len(history) and history[self._start] == self._first:
                start = self._start
            self._start, self._first = start, history[start] if start < len(history) else None
        return [system, *history[start:]]


def _render(request: ReplyRequest) -> tuple[Message, list[Message]]:
    """The system message and the history's messages, oldest first."""
    system_parts = [request.instructions.strip()]
    history: list[Message] = []
    for turn in request.turns:
        message = render_turn(turn)
        if message["role"] == "system":
            system_parts.append(message["content"])
        elif message["content"] and history and history[-1]["role"] == message["role"] == "assistant":
            # Two replies in a row (response.create twice; an assistant item given as history) are one turn
            # to the model: llama.cpp refuses two assistant messages at the end of a chat.
            history[-1] = {"role": "assistant", "content": history[-1]["content"] + "\n\n" + message["content"]}
        elif message["content"]:
            history.append(message)
    return {"role": "system", "content": "\n\n".join(p for p in system_parts if p)}, history


def _window_start(system: Message, history: list[Message], context_tokens: int, reply_tokens: int) -> int:
    """The oldest history message that the prompt keeps: the newest turns that fit, always the newest one."""
    budget = int((context_tokens - reply_tokens) * CHARS_PER_TOKEN) - len(system["content"])
    start = len(history)
    while start > 0:  # the newest turns matter most; the oldest fall out first
        budget -= len(history[start - 1]["content"]) + 16
        if budget < 0 and start < len(history):
            break
        start -= 1
    while start < len(history) and history[start]["role"] == "assistant":  # a history starts with the user
        start += 1
    return start
