"""A conversation longer than the model's context: the prompt keeps the newest turns, the stored
conversation keeps them all, and a history that slides costs only its new tokens (the cache is shifted,
not prefilled again) and no memory. A slot's window only slides forward, and a reply reaches the slot
after the prefill that was running, so no stale prompt makes the next turn prefill the history again. Without the shift every turn past the budget re-read the whole
history (~1 minute on one core for the default model's 4,096 tokens), and llama.cpp's prompt cache kept a
copy of the slot's KV state each turn (~45 MB a turn for the default model): latency and memory grew
without bound over a long day."""

from __future__ import annotations

import threading
from pathlib import Path

from engine.backends.base import ReplyRequest, Turn
from engine.backends.embedded import _Prefiller, _Workers
from engine.llm.chat_model import ChatModel
from engine.llm.prompt import ForwardWindow, build_messages
from engine.models.store import ModelStore
from engine.runtime import inference_threads

CONTEXT = 1024
REPLY = 64


def _turns(count: int) -> tuple[Turn, ...]:
    turns = []
    for index in range(count):
        turns.append(Turn("user", f"Question {index}: what could I cook tonight with rice, leeks and {index} eggs?"))
        turns.append(Turn("assistant", f"Answer {index}: a leek risotto with a fried egg on top would be lovely, "
                                       "and it takes about half an hour."))
    return tuple(turns)


def test_a_long_conversation_keeps_the_newest_turns_within_the_budget():
    request = ReplyRequest("You are a helpful voice assistant.", _turns(60))
    messages = build_messages(request, CONTEXT, REPLY)
    assert messages[0]["role"] == "system"
    assert messages[1]["role"] == "user"  # the kept history starts with the person speaking
    assert messages[-1]["content"] == request.turns[-1].text  # the newest turn is always there
    assert len(messages) - 1 < len(request.turns)  # the oldest fell out of the prompt…
    assert len(request.turns) == 120  # …not out of the conversation


def test_a_sliding_history_reuses_the_cache_instead_of_prefilling_it_again():
    model = ChatModel(ModelStore().resolve("smollm2-135m-instruct").file(), inference_threads(), CONTEXT, slots=1)
    try:
        instructions = "You are a helpful voice assistant."
        turns = _turns(40)
        before = build_messages(ReplyRequest(instructions, turns), CONTEXT, REPLY)
        first = model.prefill(before, slot=0)
        assert first.prompt_tokens > 600  # the budget is full: the window is about to slide

        later = (*_turns(42), Turn("user", "And what wine goes with that?"))  # two more exchanges
        after = build_messages(ReplyRequest(instructions, later), CONTEXT, REPLY)
        assert after[1] != before[1]  # the oldest kept turn left: the common prefix is the system prompt only
        second = model.prefill(after, slot=0)
        print(f"before: {first.prompt_tokens} tokens prefilled; after the slide: {second.prompt_tokens} "
              f"prefilled, {second.cached_tokens} reused")
        assert second.cached_tokens > 0.8 * first.prompt_tokens
        assert second.prompt_tokens < 150  # the new exchanges and the reply header, not the history

        rss_before = _rss_mb()
        for extra in range(43, 53):  # ten more turns, each sliding the window
            messages = build_messages(ReplyRequest(instructions, _turns(extra)), CONTEXT, REPLY)
            stats = model.prefill(messages, slot=0)
            assert stats.prompt_tokens < 150
        growth = _rss_mb() - rss_before
        print(f"memory after ten more slides: {growth:+.1f} MB")
        assert growth < 20  # was ~20 MB a slide with the tiny model
    finally:
        model.close()


SCREEN_TEXT = "Boarding pass. Flight CF 204 to Lisbon, gate 22, boarding 14:05, seat 17C. " * 8


def _screen_question(turns: tuple[Turn, ...], question: str) -> tuple[Turn, ...]:
    """A question asked with the screen's text (long: the window slides forward to make room)."""
    return (*turns, Turn("user", SCREEN_TEXT + question))


def test_a_window_never_slides_back_to_a_turn_it_has_left():
    instructions = "You are a helpful voice assistant."
    window = ForwardWindow()
    history = _turns(40)
    with_screen = window.messages(ReplyRequest(instructions, _screen_question(history, "What gate?")), CONTEXT, REPLY)
    # The same question's partial transcript, without the screen's text: the plain budget takes older turns.
    partial = ReplyRequest(instructions, (*history, Turn("user", "What gate")))
    assert build_messages(partial, CONTEXT, REPLY)[1] != with_screen[1]
    kept = window.messages(partial, CONTEXT, REPLY)
    assert kept[1] == with_screen[1]  # starts where the slot's cache does
    assert kept[-1]["content"] == "What gate"

    # A conversation that changed under it (cleared, started again) starts afresh.
    fresh = window.messages(ReplyRequest(instructions, _turns(2)), CONTEXT, REPLY)
    assert fresh == build_messages(ReplyRequest(instructions, _turns(2)), CONTEXT, REPLY)


def test_a_stale_prompt_after_a_screen_question_reuses_the_cache_where_the_plain_window_prefilled_it_all():
    model = ChatModel(ModelStore().resolve("smollm2-135m-instruct").file(), inference_threads(), 2 * CONTEXT, slots=2)
    try:  # (room to spare: the screen's digits take more tokens than CHARS_PER_TOKEN expects)
        instructions = "You are a helpful voice assistant."
        history = _turns(40)
        asked = _screen_question(history, "What gate does my flight leave from?")
        stale = (*history, Turn("user", "What gate does my"))
        window = ForwardWindow()
        for slot, build in ((0, lambda turns: build_messages(ReplyRequest(instructions, turns), CONTEXT, REPLY)),
                            (1, lambda turns: window.messages(ReplyRequest(instructions, turns), CONTEXT, REPLY))):
            model.prefill(build(asked), slot=slot)
            stats = model.prefill(build(stale), slot=slot)
            print(f"slot {slot}: {stats.prompt_tokens} prefilled, {stats.cached_tokens} reused")
            if slot == 0:
                assert stats.prompt_tokens > 400  # an older turn came back: the history was prefilled again
            else:
                assert stats.prompt_tokens < 30  # the partial's words
    finally:
        model.close()


def test_a_reply_waits_for_the_prefill_that_is_running():
    model = ChatModel(ModelStore().resolve("smollm2-135m-instruct").file(), inference_threads(), CONTEXT, slots=1)
    workers = _Workers()
    try:
        started = threading.Event()

        class Watched:  # the real model, saying when the background prefill reached it
            def prefill(self, messages, *, slot):
                started.set()
                return model.prefill(messages, slot=slot)

        prefiller = _Prefiller(Watched(), 0, workers)
        messages = build_messages(ReplyRequest("You are a helpful voice assistant.", _turns(20)), CONTEXT, REPLY)
        prefiller.request(messages)
        assert started.wait(10)
        prefiller.cancel_pending()  # what a reply does: the running prefill is not pending any more
        prefiller.settle()
        stats = model.prefill(messages, slot=0)
        assert stats.cached_tokens > 400 and stats.prompt_tokens <= 2  # it had run to the end before settle
    finally:
        workers.stop_all()
        model.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")
