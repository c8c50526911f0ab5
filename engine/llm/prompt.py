"""Turn a conversation into chat messages for a text model, within its context budget.

The rendering of earlier turns never changes between requests, so the KV cache of a slot stays valid
for everything but the newest turn.
"""

from __future__ import annotations

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
    system: Message = {"role": "system", "content": "\n\n".join(p for p in system_parts if p)}

    budget = int((context_tokens - reply_tokens) * CHARS_PER_TOKEN) - len(system["content"])
    kept: list[Message] = []
    for message in reversed(history):  # the newest turns matter most; the oldest fall out first
        budget -= len(message["content"]) + 16
        if budget < 0 and kept:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0]["role"] == "assistant":  # a history starts with the user speaking
        kept.pop(0)
    return [system, *kept]
