"""BargeInDetector's policy with stand-ins for Silero and the canceller (both on real audio:
test_barge_in_audio.py and test_echo_cancellation.py)."""

from app.audio.barge_in_detector import CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS, HALF_DUPLEX_MIN_SPEECH_MS, BargeInDetector
from app.audio.voice_activity import DEFAULT_MIN_SPEECH_MS


class Vad:
    def __init__(self):
        self.threshold, self.onset, self.resets = 0.0, False, 0
        self.sure_threshold = None
        self.min_speech_ms = DEFAULT_MIN_SPEECH_MS

    def feed(self, _chunk) -> bool:
        return self.onset

    def reset(self) -> None:
        self.resets += 1


class Canceller:
    def __init__(self, heard: bool):
        self.heard = heard
        self.last_excess = None
        self.excess_ear = False

    def echo_heard(self) -> bool:
        return self.heard


def test_without_echo_it_listens_at_the_persons_sensitivity():
    vad = Vad()
    detector = BargeInDetector(vad, Canceller(heard=False), threshold=0.5)
    vad.onset = True
    assert detector.feed(None) and vad.threshold == 0.5
    assert vad.sure_threshold == 0.8  # one frame this sure is enough
    detector.threshold = 0.7
    detector.feed(None)
    assert vad.sure_threshold is None  # a strict person's setting keeps the sustained-speech rule


def test_with_echo_heard_it_is_stricter_capped_and_follows_the_echo_verdict():
    vad, canceller = Vad(), Canceller(heard=True)
    detector = BargeInDetector(vad, canceller, threshold=0.5)
    assert not detector.feed(None) and vad.threshold == 0.7
    assert vad.sure_threshold is None  # echo residue must never start speech on one frame
    detector.threshold = 0.8
    detector.feed(None)
    assert vad.threshold == 0.9
    canceller.heard = False  # headphones plugged in: the next chunk is judged at the person's own setting
    detector.feed(None)
    assert vad.threshold == 0.8
    detector.reset()
    assert vad.resets == 1


def test_half_duplex_takes_sustained_speech_while_the_echo_is_heard():
    vad, canceller = Vad(), Canceller(heard=True)
    detector = BargeInDetector(vad, canceller, threshold=0.5)
    detector.feed(None)
    assert vad.min_speech_ms == DEFAULT_MIN_SPEECH_MS
    detector.half_duplex = True  # the app gave up on the canceller
    detector.feed(None)
    assert vad.min_speech_ms == HALF_DUPLEX_MIN_SPEECH_MS and vad.threshold == 0.7
    canceller.heard = False  # headphones: no echo to guard against
    detector.feed(None)
    assert vad.min_speech_ms == DEFAULT_MIN_SPEECH_MS and vad.sure_threshold == 0.8


def test_with_echo_heard_what_the_echo_cannot_explain_is_judged_at_the_persons_own_threshold():
    vad, excess_vad, canceller = Vad(), Vad(), Canceller(heard=True)
    detector = BargeInDetector(vad, canceller, threshold=0.5, excess_activity=excess_vad)
    excess_vad.onset = True
    assert not detector.feed(None)  # no excess known yet (the echo's delay is not found): AEC3's output only
    assert vad.min_speech_ms == DEFAULT_MIN_SPEECH_MS
    canceller.excess_ear = True  # the delay is found, the excess withheld for now (learning, or just re-placed)
    assert not detector.feed(None)
    assert vad.min_speech_ms == CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS  # AEC3 leaks most then: the slow ear
    canceller.last_excess = "frame"
    assert detector.feed(None) and detector.heard_by == "excess"
    assert vad.min_speech_ms == CANCELLED_BESIDE_EXCESS_MIN_SPEECH_MS  # beside the excess, the slow, sure ear
    vad.onset = True
    assert detector.feed(None) and detector.heard_by == "cancelled"
    vad.onset = False
    # The excess starts on one sure frame too; what AEC3 leaves never does.
    assert (excess_vad.threshold, excess_vad.sure_threshold, vad.threshold, vad.sure_threshold) == (0.5, 0.8, 0.7, None)
    detector.half_duplex = True
    detector.feed(None)
    assert excess_vad.min_speech_ms == HALF_DUPLEX_MIN_SPEECH_MS and excess_vad.sure_threshold is None
    canceller.heard = False  # headphones: the raw microphone alone decides
    excess_vad.onset, vad.onset = True, False
    assert not detector.feed(None)
    detector.reset()
    assert (vad.resets, excess_vad.resets) == (1, 1)
