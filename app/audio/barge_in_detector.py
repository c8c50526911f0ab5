"""The local barge-in detector: is the person talking over the reply?

Silero (VoiceActivity) on the microphone signal. Where no echo reaches the microphone (headphones:
EchoCanceller.echo_heard is False, and the signal is the raw one), it listens at the person's own
sensitivity and fires on 64 ms of speech, or at once on one 32 ms frame it is sure of (SURE_MARGIN
above the threshold: 0.8 at the default); measured on the test voices that cut the onset delay
from 80/120 ms (p50/p95) to 60/80 ms, while 30 ms vocal fragments and noises still never fire (at 0.85:
60/90 ms; 40 ms fragments fire a little more often at 0.8, 14 of 36 against 11). Where the reply's echo does reach it (open speakers), the
signal is echo-cancelled, and what the canceller leaves of the echo must never pass for the person,
so it listens more strictly: the threshold is raised by ECHO_MARGIN.

Measured on the harness's echo paths (`confide bench --aec`, 40 replies on the saturating one): at
the plain threshold 3 replies of 40 were taken for the person, at +0.2 one; a person as loud as the
echo was still heard in ~125 ms (median). Vetoing onsets that correlate with what was played was
tried and dropped: resetting the detector on each veto delayed real interruptions by 0.2-1 s.
"""

from __future__ import annotations

from app.audio.echo_canceller import EchoCanceller
from app.audio.voice_activity import VoiceActivity

ECHO_MARGIN = 0.2  # added to the threshold while the echo is heard (capped at MAX_THRESHOLD)
MAX_THRESHOLD = 0.9
SURE_MARGIN = 0.3  # where no echo is heard, one frame this far above the threshold is speech
MAX_SURE = 0.95  # above it the sure path is off (Silero rarely reaches it on a first frame)


class BargeInDetector:
    """`feed` and `reset` run on the capture worker (MicRouter's speech_onset and reset_speech_onset)."""

    def __init__(self, voice_activity: VoiceActivity, canceller: EchoCanceller, threshold: float):
        self._vad = voice_activity
        self._canceller = canceller
        self.threshold = threshold  # the person's sensitivity, as a Silero threshold

    @property
    def strict_threshold(self) -> float:
        return round(min(MAX_THRESHOLD, self.threshold + ECHO_MARGIN), 2)

    @property
    def sure_threshold(self) -> float | None:
        sure = round(self.threshold + SURE_MARGIN, 2)
        return sure if sure <= MAX_SURE else None

    def feed(self, chunk) -> bool:
        if self._canceller.echo_heard():  # what the canceller leaves must never pass for the person
            self._vad.threshold, self._vad.sure_threshold = self.strict_threshold, None
        else:
            self._vad.threshold, self._vad.sure_threshold = self.threshold, self.sure_threshold
        return self._vad.feed(chunk)

    def reset(self) -> None:
        self._vad.reset()
