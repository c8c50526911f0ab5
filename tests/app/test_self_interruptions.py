"""Barge-ins after which the engine heard nobody: counted on a fake clock here; the app on the harness
with the real engine is in test_app_end_to_end.py."""

from __future__ import annotations

import pytest

from app.audio.self_interruptions import CONFIRM_S, IN_A_ROW, SelfInterruptions


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _unheard(counter: SelfInterruptions, clock: Clock) -> None:
    counter.barge_in()
    clock.now += CONFIRM_S
    counter.expire()


def test_barge_ins_in_a_row_that_nobody_followed_say_the_echo_gets_through():
    failing, clock = [], Clock()
    counter = SelfInterruptions(lambda: failing.append(clock.now), clock)
    for _ in range(IN_A_ROW - 1):
        _unheard(counter, clock)
    assert not failing and counter.in_a_row == IN_A_ROW - 1
    _unheard(counter, clock)
    assert len(failing) == 1 and counter.in_a_row == 0  # said once; counting starts again


def test_the_person_heard_after_a_barge_in_breaks_the_row():
    failing, clock = [], Clock()
    counter = SelfInterruptions(lambda: failing.append(clock.now), clock)
    _unheard(counter, clock)
    counter.barge_in()
    clock.now += 0.4
    counter.speech_heard()  # the engine heard speech
    clock.now += CONFIRM_S
    counter.expire()  # the timer of that barge-in: nothing left to judge
    assert counter.in_a_row == 1
    counter.person_heard()  # and its words were the person's
    _unheard(counter, clock)
    assert not failing and counter.in_a_row == 1


def test_turns_of_its_own_voice_count_with_unheard_barge_ins():
    failing, clock = [], Clock()
    counter = SelfInterruptions(lambda: failing.append(clock.now), clock)
    _unheard(counter, clock)
    counter.barge_in()
    counter.speech_heard()  # the echo was loud enough for the engine too...
    counter.own_voice_heard()  # ...which heard the reply's own words
    assert len(failing) == 1 and counter.in_a_row == 0


def test_a_timer_that_fires_early_judges_nothing_and_speech_without_a_barge_in_counts_nothing():
    failing, clock = [], Clock()
    counter = SelfInterruptions(lambda: failing.append(clock.now), clock)
    counter.speech_heard()  # an ordinary turn
    counter.barge_in()
    clock.now += CONFIRM_S * 0.98  # Qt's coarse timers fire this early
    assert counter.expire() == pytest.approx(CONFIRM_S * 0.02)  # the seconds to wait yet, judged again then
    assert counter.in_a_row == 0
    clock.now += CONFIRM_S * 0.02
    assert counter.expire() is None
    assert counter.in_a_row == 1
    assert counter.expire() is None  # nothing waiting
    counter.forget()  # another device: nothing counts from before
    _unheard(counter, clock)
    assert not failing and counter.in_a_row == 1


def test_its_own_voice_heard_late_after_a_barge_in_counts_that_barge_in_once():
    """On a slow machine the engine's turn from the echo may start after CONFIRM_S: the barge-in is
    counted as unheard, and the turn of its own voice that follows is the same event, not a second."""
    failing, clock = [], Clock()
    counter = SelfInterruptions(lambda: failing.append(clock.now), clock)
    _unheard(counter, clock)
    counter.speech_heard()  # late
    counter.own_voice_heard()
    assert counter.in_a_row == 1 and not failing
    counter.own_voice_heard()  # a turn of its own voice with no barge-in before it counts
    assert len(failing) == 1
