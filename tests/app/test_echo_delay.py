"""EchoDelay holds the echo's delay still against drifting clocks; PlayedAudio reads the reference
between samples for it. The canceller with a drifting echo: test_echo_excess.py."""

from __future__ import annotations

import numpy as np

from app.audio.echo_delay import MAX_DRIFT, EchoDelay
from app.audio.echo_reference import PlayedAudio

RATE = 24_000


def _follow(delay: EchoDelay, true_lag, seconds: int) -> list[float]:
    """A check every second: what it measures is the true delay less what the reference is slid by."""
    errors = []
    for t in range(1, seconds + 1):
        seen = true_lag(t) - delay.shift_at(float(t))
        delay.measured(seen, float(t))
        errors.append(seen - delay.target)
    return errors


def test_a_steady_drift_is_followed_until_the_delay_holds_to_a_fraction_of_a_sample():
    delay = EchoDelay(jump_samples=120)
    errors = _follow(delay, lambda t: 1500.0 + 9.6 * t, 30)
    assert max(abs(e) for e in errors[12:]) < 0.5, errors
    assert abs(delay.rate - 9.6) < 0.2
    # Between checks (a pause between replies) the slide goes on at the drift's rate.
    assert abs((1500.0 + 9.6 * 40) - delay.shift_at(40.0) - delay.target) < 0.5


def test_a_jump_is_taken_back_at_once_and_not_taken_for_drift():
    delay = EchoDelay(jump_samples=120)
    _follow(delay, lambda t: 1500.0, 5)
    assert not delay.measured(1500.0 + 480.0 - delay.shift_at(6.0), 6.0)
    assert delay.rate == 0.0 and delay.shift_at(6.0) == 480.0
    assert delay.measured(1980.0 - delay.shift_at(7.0), 7.0)


def test_a_change_after_the_reference_was_placed_afresh_is_taken_back_not_taken_for_drift():
    delay = EchoDelay(jump_samples=120)
    _follow(delay, lambda t: 1500.0, 5)
    assert delay.measured(1534.0 - delay.shift_at(5.5), 5.5, placed_afresh=True)  # 1.4 ms: within a jump
    assert delay.rate == 0.0 and delay.shift_at(5.5) == 34.0


def test_the_drift_followed_is_bounded_and_reset_forgets_it():
    delay = EchoDelay(jump_samples=120)
    _follow(delay, lambda t: 1500.0 + 100.0 * t, 10)  # 4000 ppm: no pair of clocks is that far apart
    assert delay.rate <= MAX_DRIFT * RATE
    delay.reset()
    assert delay.target is None and delay.shift_at(100.0) == 0.0


def test_the_reference_is_read_between_samples():
    played = PlayedAudio()
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32)
    played.played(tone, 10.0, RATE, 0)
    for fraction in (0.0, 0.25, 0.5, 0.9):
        window = played.window(10.1 + fraction / RATE, 480)
        exact = (0.5 * np.sin(2 * np.pi * 1000 * (t[2400:2880] + fraction / RATE))
                 + 0.2 * np.sin(2 * np.pi * 7000 * (t[2400:2880] + fraction / RATE)))
        assert np.max(np.abs(window - exact)) < 0.005, fraction
    # At a segment's edges the samples beyond it count as silence.
    assert not played.window(5.0 + 0.5 / RATE, 240).any()
