"""BargeInDetector's policy with stand-ins for Silero and the canceller (both on real audio:
test_barge_in_audio.py and test_echo_cancellation.py)."""

from app.audio.barge_in_detector import ECHO_SPAN_S, BargeInDetector


class Vad:
    def __init__(self):
        self.threshold, self.onset, self.resets = 0.0, False, 0

    def feed(self, _chunk) -> bool:
        return self.onset

    def reset(self) -> None:
        self.resets += 1


class Canceller:
    def __init__(self, heard: bool, likeness: float):
        self.heard, self.likeness, self.spans = heard, likeness, []

    def echo_heard(self) -> bool:
        return self.heard

    def echo_likeness(self, span_s: float) -> float:
        self.spans.append(span_s)
        return self.likeness


def test_without_echo_it_listens_at_the_persons_sensitivity_and_never_vetoes():
    vad, canceller = Vad(), Canceller(heard=False, likeness=0.99)
    detector = BargeInDetector(vad, canceller, threshold=0.5)
    vad.onset = True
    assert detector.feed(None) and vad.threshold == 0.5 and canceller.spans == []


def test_with_echo_heard_it_is_stricter_and_vetoes_onsets_that_are_the_replys_echo():
    vad, canceller = Vad(), Canceller(heard=True, likeness=0.7)
    detector = BargeInDetector(vad, canceller, threshold=0.5)
    assert not detector.feed(None) and vad.threshold == 0.7  # no onset: nothing to judge
    vad.onset = True
    assert not detector.feed(None) and detector.echo_vetoes == 1 and vad.resets == 1
    canceller.likeness = 0.2  # the person, not the echo
    assert detector.feed(None) and canceller.spans == [ECHO_SPAN_S, ECHO_SPAN_S]
    detector.threshold = 0.8
    detector.feed(None)
    assert vad.threshold == 0.9  # capped
