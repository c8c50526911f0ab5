"""The local barge-in detector: is the person talking over the reply?

Silero (VoiceActivity) on the echo-cancelled microphone signal. Where no echo reaches the microphone
(headphones), it listens at the person's own sensitivity and fires on 64 ms of speech. Where the
reply's echo does reach it (open speakers), what the canceller leaves of the echo must never pass for
the person, so it listens more strictly: a threshold raised by ECHO_MARGIN, and an onset whose audio
correlates with what was just played (EchoCanceller.echo_likeness) is the reply leaking through,
not the person, and is judged afresh.

Measured on the harness's echo paths (`confide bench --aec`): leaks of the reply scored 0.39-0.73 and
people talking over a reply 0.11-0.38 over the last 128 ms.
"""

from __future__ import annotations

from app.audio.echo_canceller import EchoCanceller
from app.audio.voice_activity import VoiceActivity

ECHO_MARGIN = 0.2  # added to the threshold while the echo is heard (capped at MAX_THRESHOLD)
MAX_THRESHOLD = 0.9
ECHO_VETO = 0.5
ECHO_SPAN_S = 0.128


class BargeInDetector:
    """`feed` and `reset` run on the capture worker (MicRouter's speech_onset and reset_speech_onset)."""

    def __init__(self, voice_activity: VoiceActivity, canceller: EchoCanceller, threshold: float):
        self._vad = voice_activity
        self._canceller = canceller
        self.threshold = threshold  # the person's sensitivity, as a Silero threshold
        self.echo_vetoes = 0  # onsets taken for the reply's own echo

    @property
    def strict_threshold(self) -> float:
        return round(min(MAX_THRESHOLD, self.threshold + ECHO_MARGIN), 2)

    def feed(self, chunk) -> bool:
        echo = self._canceller.echo_heard()
        self._vad.threshold = self.strict_threshold if echo else self.threshold
        if not self._vad.feed(chunk):
            return False
        if echo and self._canceller.echo_likeness(ECHO_SPAN_S) >= ECHO_VETO:
            self.echo_vetoes += 1
            self._vad.reset()  # a person who really is talking gets another onset
            return False
        return True

    def reset(self) -> None:
        self._vad.reset()
