"""LinearEcho: the echo a linear path makes, subtracted sample for sample, on real speech through the
synthetic speakers of tests/small_speaker.py. Its part in the barge-in detector's second ear is tested in
test_echo_excess.py; on the harness's PulseAudio paths by `confide bench --aec`."""

from __future__ import annotations

import numpy as np

from app.audio.linear_echo import FRAME, LinearEcho
from tests.small_speaker import REPLY, RATE, clean_speaker, delayed_reference, small_speaker
from tests.speakers import say


def _residual(near: np.ndarray, far: np.ndarray, learn: bool = True, filter_: LinearEcho | None = None) -> np.ndarray:
    filter_ = filter_ or LinearEcho()
    reference = delayed_reference(far)
    return np.concatenate([filter_.process(near[i:i + FRAME], reference[i:i + FRAME], learn)
                           for i in range(0, len(near) - FRAME + 1, FRAME)])


def _removed_db(echo: np.ndarray, residual: np.ndarray, start: int) -> float:
    return 10 * np.log10(np.sum(np.square(echo[start:len(residual)], dtype=np.float64))
                         / np.sum(np.square(residual[start:], dtype=np.float64)))


def test_a_linear_path_is_removed_and_what_a_saturating_speaker_adds_is_left():
    reply = say(REPLY, "flite:slt")
    settled = 3 * RATE
    clean, saturating = clean_speaker(reply), small_speaker(reply)
    removed_clean = _removed_db(clean, _residual(clean, reply), settled)
    removed_saturating = _removed_db(saturating, _residual(saturating, reply), settled)
    # Measured: 23 dB and 8 dB.
    assert removed_clean > 18, removed_clean
    assert 3 < removed_saturating < removed_clean - 8, removed_saturating


def test_how_much_it_removes_is_measured_and_a_person_talking_over_a_reply_moves_it_little():
    reply = np.tile(say(REPLY, "flite:slt"), 3)
    clean, saturating = LinearEcho(), LinearEcho()
    _residual(clean_speaker(reply), reply, filter_=clean)
    _residual(small_speaker(reply), reply, filter_=saturating)
    assert clean.removed_db > 30 and 3 < saturating.removed_db < 15, (clean.removed_db, saturating.removed_db)
    settled = clean.removed_db
    person = say("Wait, stop, that is enough.", "flite:awb")[:round(0.4 * RATE)]  # what a barge-in lets through
    echo = clean_speaker(reply)[:len(person)] + person
    _residual(echo, reply[:len(person)], filter_=clean)
    assert clean.removed_db > settled - 1


def test_nothing_is_learnt_unless_told():
    reply = say(REPLY, "flite:slt")
    echo = clean_speaker(reply)
    np.testing.assert_allclose(_residual(echo, reply, learn=False), echo[:len(echo) // FRAME * FRAME], atol=1e-6)


def test_a_person_talking_over_the_echo_is_most_of_what_is_left():
    """Over the first 300 ms of their talking, while the filter adapts on them too (it cannot tell them
    from a change in the path), what it leaves is mostly the person: measured, 12 dB above the rest
    (the echo it has not learnt yet, and what it unlearnt)."""
    reply = say(REPLY, "flite:slt")
    echo = clean_speaker(reply)
    person = say("Wait, stop, that is enough.", "flite:awb")
    start = 4 * RATE
    span = echo[start:start + len(person)]
    person = person * np.sqrt(np.mean(np.square(span)) / np.mean(np.square(person)))  # as loud as the echo
    near = echo.copy()
    near[start:start + len(person)] += person
    residual = _residual(near, reply)
    first = slice(start, start + round(0.3 * RATE))
    error = residual[first] - near[first] + echo[first]  # what is left beside the person
    person_db = 10 * np.log10(np.sum(np.square(person[:round(0.3 * RATE)], dtype=np.float64))
                              / np.sum(np.square(error, dtype=np.float64)))
    assert person_db > 9, person_db
