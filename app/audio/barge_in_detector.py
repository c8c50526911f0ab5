"""The local barge-in detector: is the person talking over the reply?

Silero (VoiceActivity) on the microphone signal, judged three ways:
- No echo reaches the microphone (headphones: EchoCanceller.echo_heard is False, and the signal is
  the raw one): the person's own sensitivity, 64 ms of speech, or at once on one 32 ms frame it is
  sure of (SURE_MARGIN above the threshold: 0.8 at the default). On the test voices the sure frame
  cut the onset delay from 80/120 ms (p50/p95) to 60/80 ms; 30 ms vocal fragments and noises still
  never fire (at 0.85 it was 60/90 ms; 40 ms fragments fire a little more often at 0.8, 14 of 36
  against 11).
- The echo reaches it (open speakers) and is cancelled: what the canceller leaves must never pass for
  the person, so the threshold is raised by ECHO_MARGIN. On the harness's saturating echo path (40
  replies) 3 replies were taken for the person at the plain threshold, 1 at +0.2. But AEC3 removes the
  person too while both talk, so a second Silero listens, at the person's own threshold, to what the
  echo cannot explain (EchoCanceller.last_excess, see echo_excess.py); either one interrupts, the
  cancelled signal then only after CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS of speech. The excess ear
  also starts at once on one sure frame: replayed over 215 echo-only replies it added no false onset
  (none at OVERESTIMATE 5, the same 3 at 4) and took the detection's p50 from 160 to 121 ms.
- Half-duplex (the app found the canceller failing: the echo gets through): it also takes
  HALF_DUPLEX_MIN_SPEECH_MS of speech, longer than any burst of echo, so the person speaks up for a
  moment to interrupt.

Vetoing onsets that correlate with what was played was tried and dropped: resetting the detector on
each veto delayed real interruptions by 0.2-1 s.
"""

from __future__ import annotations

from app.audio.echo_canceller import EchoCanceller
from app.audio.voice_activity import DEFAULT_MIN_SPEECH_MS, VoiceActivity

ECHO_MARGIN = 0.2  # added to the threshold while the echo is heard (capped at MAX_THRESHOLD)
MAX_THRESHOLD = 0.9
SURE_MARGIN = 0.3  # where no echo is heard, one frame this far above the threshold is speech
MAX_SURE = 0.95  # above it the sure path is off (Silero rarely reaches it on a first frame)
HALF_DUPLEX_MIN_SPEECH_MS = 320
# While what the echo cannot explain is heard too, the cancelled signal is the slow, sure ear: it takes
# this much speech. On the harness it was the source of every false barge-in once the excess ear was in
# (5 in 100 replies on the saturating path, 0 from the excess), while the excess heard 20 of 24
# interruptions first.
CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS = 320


def sure_threshold(threshold: float) -> float | None:
    """The probability at which one frame is speech at once, for the person's threshold (None: never)."""
    sure = round(threshold + SURE_MARGIN, 2)
    return sure if sure <= MAX_SURE else None


class BargeInDetector:
    """`feed` and `reset` run on the capture worker (MicRouter's speech_onset and reset_speech_onset)."""

    def __init__(self, voice_activity: VoiceActivity, canceller: EchoCanceller, threshold: float,
                 excess_activity: VoiceActivity | None = None):
        self._vad = voice_activity
        self._excess_vad = excess_activity or VoiceActivity()
        self._canceller = canceller
        self.threshold = threshold  # the person's sensitivity, as a Silero threshold
        self.half_duplex = False  # set by the app when the canceller fails for good
        # What heard the last onset: "microphone" (no echo heard), "cancelled" (AEC3's output) or
        # "excess" (what the echo cannot explain). For the log and the benchmark's false barge-ins.
        self.heard_by = ""

    @property
    def strict_threshold(self) -> float:
        return round(min(MAX_THRESHOLD, self.threshold + ECHO_MARGIN), 2)

    @property
    def sure_threshold(self) -> float | None:
        return sure_threshold(self.threshold)

    def feed(self, chunk) -> bool:
        vad = self._vad
        if not self._canceller.echo_heard():
            vad.threshold, vad.sure_threshold = self.threshold, self.sure_threshold
            vad.min_speech_ms = DEFAULT_MIN_SPEECH_MS
            return self._heard(vad.feed(chunk), "microphone")
        min_speech_ms = HALF_DUPLEX_MIN_SPEECH_MS if self.half_duplex else DEFAULT_MIN_SPEECH_MS
        excess = self._canceller.last_excess
        # What the canceller leaves must never pass for the person.
        vad.threshold, vad.sure_threshold = self.strict_threshold, None
        # Slow beside the excess, and also where the excess is withheld for a moment (the reference was
        # just placed afresh): AEC3 leaks most then, and one 64 ms burst of it once passed for the person.
        vad.min_speech_ms = max(min_speech_ms, CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS) \
            if self._canceller.excess_ear else min_speech_ms
        if self._heard(vad.feed(chunk), "cancelled"):
            return True
        if excess is None:
            return False
        excess_vad = self._excess_vad
        # Half-duplex: the path defeats the canceller, and the excess's prediction with it.
        excess_vad.threshold = self.threshold
        excess_vad.sure_threshold = None if self.half_duplex else self.sure_threshold
        excess_vad.min_speech_ms = min_speech_ms
        return self._heard(excess_vad.feed(excess), "excess")

    def _heard(self, onset: bool, by: str) -> bool:
        if onset:
            self.heard_by = by
        return onset

    def reset(self) -> None:
        self._vad.reset()
        self._excess_vad.reset()
