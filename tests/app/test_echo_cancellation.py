"""Echo cancellation: hands-free on open speakers without the assistant interrupting itself.

Unit tests of the reference timing and the canceller on synthetic echo (real AEC3), then the app's own
audio path on the PulseAudio harness with a real echo path (tests/harness/echo_path.py): replies played
with nobody talking never trigger a barge-in; a person talking over a reply does, and the reply stops.
The figures (ERLE, detection rates and times) come from `confide bench --aec`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.audio.echo_canceller import FRAME, EchoCanceller, EchoMonitor
from app.audio.echo_reference import PlayedAudio
from app.bench import echo_trials
from tests.harness.echo_path import acoustic_echo, coloured_echo
from tests.harness.pulse import RATE, PulseHarness, pulse_audio  # noqa: F401  (pytest fixture)
from tests.speakers import say

PROTOCOL_RATE = 24_000


def _speech() -> np.ndarray:
    return say("The train to the airport leaves every twenty minutes from platform three.", "flite:slt")


def _play(played: PlayedAudio, audio_48k: np.ndarray, start: float, block: int = 240) -> None:
    """As the speaker's callback would: 5 ms blocks at 48 kHz, each with when it leaves the device
    (with the ±1 ms jitter PulseAudio reports)."""
    jitter = np.random.default_rng(1).uniform(-0.001, 0.001, len(audio_48k) // block + 1)
    for i in range(0, len(audio_48k) - block + 1, block):
        played.played(audio_48k[i:i + block].copy(), start + i / RATE + jitter[i // block], RATE, 960 + i)


def test_played_audio_is_found_at_its_time_at_the_protocol_rate():
    speech = _speech()
    played = PlayedAudio()
    _play(played, echo_trials_to_48k(speech), start=100.0)
    window = played.window(100.5, PROTOCOL_RATE)  # one second from half a second in
    expected = speech[PROTOCOL_RATE // 2: PROTOCOL_RATE // 2 + PROTOCOL_RATE]
    lag = _lag(window, expected)
    assert abs(lag) <= 2, f"reference off by {lag} samples"
    assert played.playing_at(101.0) and not played.playing_at(90.0)
    assert not played.window(50.0, 480).any()  # nothing played then: zeros


def test_after_the_device_ran_dry_the_reference_follows_the_reported_time():
    """An underrun delays every later frame by the gap; the reference moves with it, at once."""
    speech = echo_trials_to_48k(_speech())
    played, block, gap = PlayedAudio(), 240, 0.02
    half = (len(speech) // 2) // block * block
    for i in range(0, len(speech) - block + 1, block):
        late = gap if i >= half else 0.0  # from the middle on, 20 ms of the device's own silence first
        played.played(speech[i:i + block].copy(), 100.0 + i / RATE + late, RATE, 960 + i, ran_dry=i == half)
    at = 100.0 + half / RATE + gap + 0.5  # half a second after the gap, by the reported times
    window = played.window(at, PROTOCOL_RATE // 2)
    expected = _speech()[round((half / RATE + 0.5) * PROTOCOL_RATE):][:PROTOCOL_RATE // 2]
    assert abs(_lag(window, expected)) <= 2
    before = played.window(100.2, PROTOCOL_RATE // 4)  # the first half stays where it was
    assert abs(_lag(before, _speech()[round(0.2 * PROTOCOL_RATE):][:PROTOCOL_RATE // 4])) <= 2


def echo_trials_to_48k(audio: np.ndarray) -> np.ndarray:
    import soxr

    return soxr.resample(audio, PROTOCOL_RATE, RATE, quality="HQ").astype(np.float32)


def _lag(a: np.ndarray, b: np.ndarray) -> int:
    corr = np.correlate(a, b, mode="full")
    return int(np.argmax(corr)) - (len(b) - 1)


class _Collect:
    def __init__(self):
        self.chunks: list[tuple[np.ndarray, float]] = []

    def __call__(self, chunk, capture_time):
        self.chunks.append((np.array(chunk), capture_time))

    def audio(self) -> np.ndarray:
        return np.concatenate([c for c, _ in self.chunks])


def test_with_nothing_played_audio_passes_through_untouched():
    out = _Collect()
    canceller = EchoCanceller(PlayedAudio(), out)
    chunks = [np.random.default_rng(i).standard_normal(240).astype(np.float32) * 0.1 for i in range(20)]
    for i, chunk in enumerate(chunks):
        canceller.process(chunk, 10.0 + i * 0.01)
    assert np.array_equal(out.audio(), np.concatenate(chunks))
    assert canceller.frames_cancelled == 0


def test_cancels_a_delayed_attenuated_echo_of_what_played_and_keeps_time():
    speech = _speech()
    played = PlayedAudio()
    _play(played, echo_trials_to_48k(speech), start=100.0)
    delay = round(0.045 * PROTOCOL_RATE)  # the acoustic path and the device buffers
    echo = np.concatenate([np.zeros(delay, np.float32), speech * 0.5])[:len(speech)]
    out = _Collect()
    canceller = EchoCanceller(played, out)
    sizes = (240, 200, 280, 240, 480, 120)  # blocks do not line up with 10 ms frames
    position, i = 0, 0
    while position + 480 <= len(echo):
        size = sizes[i % len(sizes)]
        # capture times jitter like PulseAudio's reports; the canceller keeps a steady timeline
        canceller.process(echo[position:position + size], 100.0 + position / PROTOCOL_RATE + (0.001 if i % 2 else 0))
        position, i = position + size, i + 1
    cleaned = out.audio()
    times = np.array([t for _, t in out.chunks])
    assert np.all(np.diff(times) > 0) and abs(times[0] - 100.0) < 0.002
    settled = slice(2 * PROTOCOL_RATE, len(cleaned))  # after two seconds of learning
    erle = 10 * np.log10(np.mean(echo[settled] ** 2) / max(np.mean(cleaned[settled] ** 2), 1e-20))
    assert erle > 20, f"only {erle:.1f} dB of echo removed"
    assert canceller.frames_cancelled > 0 and canceller.monitor.erle_db() > 10


def test_disabled_cancels_nothing():
    speech = _speech()
    played = PlayedAudio()
    _play(played, echo_trials_to_48k(speech), start=100.0)
    out = _Collect()
    canceller = EchoCanceller(played, out, enabled=False)
    canceller.process(speech[:2400], 100.0)
    assert np.array_equal(out.audio(), speech[:2400]) and canceller.frames_cancelled == 0


def test_monitor_says_failing_only_when_a_whole_window_of_echo_gets_through():
    far = np.full(FRAME, 0.1, np.float32)
    near = np.full(FRAME, 0.05, np.float32)
    good, bad = EchoMonitor(window_s=1.0), EchoMonitor(window_s=1.0)
    verdicts_good = [good.add(near, near * 0.01, far) for _ in range(300)]  # 40 dB removed
    verdicts_bad = [bad.add(near, near * 0.9, far) for _ in range(300)]  # ~1 dB removed
    assert not any(verdicts_good) and good.erle_db() == pytest.approx(40.0, abs=0.1)
    assert any(verdicts_bad) and not any(verdicts_bad[:99])
    silent = EchoMonitor(window_s=1.0)
    assert not any(silent.add(near, near, np.zeros(FRAME, np.float32)) for _ in range(300))  # nothing played
    assert silent.erle_db() is None


def test_echo_is_heard_only_where_the_microphone_hears_what_played():
    speech = np.tile(_speech(), 2)  # the echo is judged absent only after three checks, a second apart
    delay = round(0.045 * PROTOCOL_RATE)
    echo = np.concatenate([np.zeros(delay, np.float32), speech * 0.5])[:len(speech)]
    noise = np.random.default_rng(3).standard_normal(len(speech)).astype(np.float32) * 0.05
    verdicts = {}
    for name, near in (("open speakers", echo), ("headphones in a noisy room", noise)):
        played = PlayedAudio()
        _play(played, echo_trials_to_48k(speech), start=100.0)
        out = _Collect()
        canceller = EchoCanceller(played, out)
        assert canceller.echo_heard()  # before any playback was judged: the safe guess
        for position in range(0, len(near) - FRAME + 1, FRAME):
            canceller.process(near[position:position + FRAME], 100.0 + position / PROTOCOL_RATE)
        verdicts[name] = canceller.echo_heard()
        if name == "headphones in a noisy room":  # the person's own sound goes on untouched
            assert np.array_equal(out.audio()[-PROTOCOL_RATE:], noise[len(out.audio()) - PROTOCOL_RATE:len(out.audio())])
    assert verdicts == {"open speakers": True, "headphones in a noisy room": False}


def test_a_person_talking_over_the_echo_does_not_make_it_pass_for_absent():
    """A check that falls in double talk scores low; one such check once switched the detector to
    the raw microphone, and the following replies' echo cut them at once."""
    speech = _speech()
    delay = round(0.045 * PROTOCOL_RATE)
    echo = np.concatenate([np.zeros(delay, np.float32), speech * 0.5])[:len(speech)]
    person = say("No wait, I meant the other platform, the one by the bridge.", "flite:awb")
    near = echo.copy()
    start = int(0.6 * PROTOCOL_RATE)  # over the first check (at 1 s of playback) and the second
    talk = np.resize(person, int(1.6 * PROTOCOL_RATE)) * 4.0  # much louder than the echo
    near[start:start + len(talk)] += talk[:len(near) - start]
    played = PlayedAudio()
    _play(played, echo_trials_to_48k(speech), start=100.0)
    canceller = EchoCanceller(played, _Collect())
    judged = []
    for position in range(0, len(near) - FRAME + 1, FRAME):
        canceller.process(near[position:position + FRAME], 100.0 + position / PROTOCOL_RATE)
        judged.append(canceller.echo_heard())
    assert all(judged)


# --- the real path on the harness ----------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_script() -> echo_trials.EchoScript:
    replies = [say(text, echo_trials.REPLY_VOICES[i % len(echo_trials.REPLY_VOICES)])
               for i, text in enumerate(echo_trials.REPLY_TEXTS)]
    users = [say(text, voice) for text, voice in zip(echo_trials.USER_LINES, echo_trials.USER_VOICES)]
    return echo_trials.EchoScript(replies, users)


ECHO_ONLY_REPLIES = 20
DOUBLE_TALK_TRIALS = 3


@pytest.mark.parametrize("path", ["loopback", "coloured"])
def test_echo_alone_never_interrupts_and_talking_over_the_reply_does(pulse_audio: PulseHarness, echo_script, path):
    echo_path = (acoustic_echo(pulse_audio, latency_ms=60, gain_db=-6.0) if path == "loopback"
                 else coloured_echo(pulse_audio, gain_db=0.0, drive=4.0))
    rig = echo_trials.EchoRig().start()
    try:
        with echo_path:
            echo = echo_trials.echo_only(rig, pulse_audio, [echo_script.replies[i % len(echo_script.replies)]
                                                            for i in range(ECHO_ONLY_REPLIES)])
            assert echo["echo_rms"] > 0.01, "the echo path carried no echo: the test would prove nothing"
            # The target is zero: `confide bench --aec` measures 0-2 in 100 replies (README). Held
            # here as a regression guard that a rare underrun on a shared machine does not fail: the echo
            # is really cancelled, and at most 3 of 20 replies are cut (without cancellation: all of them).
            assert echo["erle_db"] is not None and echo["erle_db"] > 15, echo
            assert echo["false_barge_ins"] <= 3, echo
            for i in range(DOUBLE_TALK_TRIALS):
                user = echo_script.users[i]
                gain = echo_trials.line_gain(echo["echo_rms"], user, 0.0)  # as loud as the echo
                with pulse_audio.record_speaker() as heard:
                    outcome = echo_trials.double_talk(rig, pulse_audio, echo_script.replies[i], user, gain, 0.8)
                    time.sleep(0.7)  # the speaker's sound after the detection, however late in the line it came
                assert outcome.detected, f"talking over reply {i} was not heard"
                # Heard while the person still speaks (how soon is the benchmark's figure, not a test's).
                assert outcome.detect_ms < 1000 * len(user) / PROTOCOL_RATE, outcome
                # ... and the reply stopped: the speaker is silent from shortly after the detection on.
                played = heard.audio()
                after = heard.index_at(rig.last_fired_at + 0.1)
                assert after < len(played) - RATE // 2 and not np.abs(played[after:]).max() > 1e-4
        print(f"{path}: ERLE {echo['erle_db']} dB, {echo['false_barge_ins']} false barge-ins over {ECHO_ONLY_REPLIES} replies")
    finally:
        rig.stop()
