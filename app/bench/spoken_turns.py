"""End of speech → first sound of the reply, measured at the virtual devices.

Each spoken line is played into the virtual microphone while the microphone's feed and the virtual
speaker are both recorded. The end of speech is the last speech sample the microphone heard; the first
sound is the first non-zero sample the speaker played after the line began; both are arrival times on
the same clock. The app's link thread also notes when the reply's first audio delta arrived, which
splits the figure into the engine's share (with capture and socket) and the app's playback path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from app.bench.event_loop import run_for, run_until
from app.bench.sound_edges import first_sound, speech_end
from app.bench.spoken_lines import RATE, SpokenLine
from app.state import AppState

LEAD_SILENCE_S = 0.3  # the microphone hears silence first, as before anyone speaks
TAIL_S = 0.4  # recording goes on after the reply, so its last samples are in
REPLY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class TurnTiming:
    text: str
    voice: str
    eos_to_first_sound_ms: float | None  # None: no reply, or it began before the speech ended
    eos_to_first_delta_ms: float | None
    replied: bool
    premature: bool  # the reply's first sound came before the end of speech (a turn ended mid-sentence)


def _ms(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else round((later - earlier) * 1000, 1)


def speak_and_time_reply(pulse, confide, probe, line: SpokenLine, settled: AppState) -> TurnTiming:
    """Speak `line` into the microphone; wait until the reply has played and the app is back in
    `settled` (LISTENING hands-free, IDLE after a one-turn question)."""
    with pulse.record_mic_feed() as mic, pulse.record_speaker() as speaker:
        started = time.monotonic()
        feed = pulse.feed_mic(np.concatenate([np.zeros(int(LEAD_SILENCE_S * RATE), np.float32), line.audio]), RATE)
        run_until(lambda: probe.reached_since(AppState.SPEAKING, started) and confide.controller.state is settled,
                  REPLY_TIMEOUT_S)
        run_for(TAIL_S)
        feed.stop()
    end_of_speech = speech_end(mic)
    sound = first_sound(speaker, after=started)
    delta = probe.first_audio_since(started)
    premature = sound is not None and end_of_speech is not None and sound < end_of_speech
    return TurnTiming(
        text=line.text, voice=line.voice, replied=sound is not None, premature=premature,
        eos_to_first_sound_ms=None if premature else _ms(sound, end_of_speech),
        eos_to_first_delta_ms=None if premature else _ms(delta, end_of_speech))


def spoken_conversation(pulse, confide, probe, lines: list[SpokenLine], pause_s: float = 0.5) -> list[TurnTiming]:
    """One hands-free conversation: each line spoken after the previous reply has played."""
    confide.controller.set_hands_free(True)
    run_until(lambda: confide.controller.state is AppState.LISTENING, 10, "hands-free listening")
    timings = []
    for line in lines:
        timings.append(speak_and_time_reply(pulse, confide, probe, line, AppState.LISTENING))
        run_for(pause_s)
    return timings
