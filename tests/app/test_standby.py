"""AudioStandby with recording stand-ins for the streams (the real streams reopening on the real app:
test_app_end_to_end.py's push-to-talk turns after standby; the CPU it saves: `confide bench`)."""

from app.standby import AudioStandby
from app.state import AppState


class Stream:
    def __init__(self, opens: bool = True):
        self.open, self.opens, self.playing, self.last_error = True, opens, None, ""
        self.calls: list[str] = []

    def start(self) -> bool:
        self.calls.append("start")
        self.open = self.opens
        if not self.opens:
            self.last_error = "The microphone was disconnected."
        return self.opens

    def stop(self) -> None:
        self.calls.append("stop")
        self.open = False


def make(qtbot, mic=None, failures=None):
    mic, speaker = mic or Stream(), Stream()
    standby = AudioStandby(mic, speaker, lambda kind, message: failures.append((kind, message)), after_s=0.05)
    return standby, mic, speaker


def test_idle_push_to_talk_closes_both_streams_after_a_while(qtbot):
    standby, mic, speaker = make(qtbot)
    standby.state_changed(AppState.IDLE)
    assert mic.open and speaker.open  # not at once
    qtbot.waitUntil(lambda: standby.resting, timeout=2000)
    assert not mic.open and not speaker.open


def test_any_activity_reopens_them_and_cancels_a_pending_rest(qtbot):
    standby, mic, speaker = make(qtbot)
    standby.state_changed(AppState.IDLE)
    qtbot.waitUntil(lambda: standby.resting, timeout=2000)
    standby.state_changed(AppState.LISTENING)  # the talk key
    assert mic.open and speaker.open and not standby.resting
    standby.state_changed(AppState.IDLE)
    standby.state_changed(AppState.THINKING)  # a typed question, before the rest was due
    qtbot.wait(150)
    assert not standby.resting and mic.calls == ["stop", "start"]


def test_hands_free_and_speaking_never_rest(qtbot):
    standby, mic, speaker = make(qtbot)
    for state in (AppState.LISTENING, AppState.SPEAKING, AppState.THINKING, AppState.CONNECTING, AppState.ERROR):
        standby.state_changed(state)
        qtbot.wait(100)
        assert not standby.resting and mic.open, state


def test_a_reply_still_playing_out_postpones_the_rest(qtbot):
    standby, mic, speaker = make(qtbot)
    speaker.playing = "resp_1"
    standby.state_changed(AppState.IDLE)
    qtbot.wait(150)
    assert not standby.resting and speaker.open
    speaker.playing = None
    qtbot.waitUntil(lambda: standby.resting, timeout=2000)


def test_a_stream_that_will_not_reopen_is_reported(qtbot):
    failures = []
    standby, mic, speaker = make(qtbot, mic=Stream(opens=False), failures=failures)
    standby.state_changed(AppState.MUTED)
    qtbot.waitUntil(lambda: standby.resting, timeout=2000)
    standby.state_changed(AppState.LISTENING)
    assert failures == [("microphone", "The microphone was disconnected.")] and speaker.open
