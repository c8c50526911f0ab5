"""MicRouter with a scripted speech detector (the real detector on real audio: test_barge_in_audio.py,
test_echo_cancellation.py)."""

import numpy as np

from app.mic_router import HOLD_S, MicRouter

CHUNK = 240  # 10 ms at 24 kHz


class Rig:
    def __init__(self):
        self.log: list[tuple] = []
        self.onsets: set[int] = set()  # chunk numbers the detector calls an onset on
        self.count = 0
        self.router = MicRouter(send_audio=lambda chunk: self.log.append(("send", int(chunk[0]))),
                                speech_onset=lambda chunk: int(chunk[0]) in self.onsets,
                                reset_speech_onset=lambda: self.log.append(("reset",)),
                                silence_speaker=lambda rid: self.log.append(("silence", rid)),
                                on_barge_in=lambda rid, _onset: self.log.append(("barge_in", rid)))

    def chunks(self, n: int) -> None:
        for _ in range(n):
            self.count += 1
            self.router.on_audio(np.full(CHUNK, self.count, np.float32), 0.0)

    def sent(self) -> list[int]:
        return [entry[1] for entry in self.log if entry[0] == "send"]


def test_audio_streams_while_listening_and_nothing_plays():
    rig = Rig()
    rig.router.set_streaming(True)
    rig.chunks(3)
    assert rig.sent() == [1, 2, 3]


def test_during_a_reply_the_engine_hears_nothing_and_echo_is_dropped_when_it_ends():
    rig = Rig()
    rig.router.set_streaming(True)
    rig.router.guard("resp_1")
    rig.chunks(50)
    assert rig.sent() == [] and ("reset",) in rig.log
    rig.router.guard(None)
    rig.chunks(2)
    assert rig.sent() == [51, 52]


def test_barge_in_silences_first_then_sends_the_held_second_of_audio():
    rig = Rig()
    rig.router.set_streaming(True)
    rig.router.guard("resp_1")
    rig.onsets = {150}
    rig.chunks(152)
    held = round(HOLD_S * 100)
    kinds = [entry[0] for entry in rig.log]
    assert kinds.index("silence") < kinds.index("barge_in") < kinds.index("send")
    assert ("silence", "resp_1") in rig.log and ("barge_in", "resp_1") in rig.log
    # The second before the onset (its chunk included), then everything after, in order, once each.
    assert rig.sent() == list(range(150 - held + 1, 153))


def test_push_to_talk_not_held_sends_nothing_even_on_barge_in():
    rig = Rig()
    rig.router.guard("resp_1")
    rig.onsets = {5}
    rig.chunks(8)
    assert rig.sent() == [] and ("barge_in", "resp_1") in rig.log

