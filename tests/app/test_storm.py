"""Barge-in storm: 200 interruptions in a row, at seeded random points of replies, through the whole app
(controller, link, speaker on the PulseAudio harness) against the engine's real Realtime server in its own
process (the tone engine: scripted replies, each one a tone that says which reply it is).

Checked from what the virtual speaker really played: no sample of a reply plays later than CUT_WINDOW_MS
after its cancellation was decided (more only if the device itself held more then); and the state always comes
back to listening, with no thread, asyncio task or unsettled reply left behind, on either side of the socket.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time

import numpy as np

from app.audio.playback import Speaker
from app.controller import UNANNOUNCED
from app.state import AppState
from tests.app.test_controller import Rig
from tests.harness.pulse import pulse_audio, report  # noqa: F401 (a fixture)
from tests.harness.tone_app import Seen, link_task_count, pump, thread_names, tone_app
from tests.harness.tone_engine import TONES, tone_frames, tones_per_frame

INTERRUPTIONS = int(os.environ.get("STORM_N", 200))
SEED = 7
# A reply: its first sound 100 ms after it is announced (a real engine takes 300 ms and more), then 3 phrases
# of 100 ms, one every 20 ms: the engine runs ahead of playback, as a real one does.
ENGINE_ARGS = ["--phrases", "3", "--phrase-ms", "100", "--step-ms", "20", "--first-step-ms", "100"]
REPLY_MS = 300
# From the decision to cut to the last sample of it at the speaker: what the device already holds
# (PortAudio's buffer through PulseAudio, DEVICE_MS here; when the sound server raises its latency on a
# loaded machine, the speaker's measured output latency at the cut stands in), one 10 ms analysis frame,
# and margin for late callbacks and the monitor's timing on a busy machine: the bound test_audio_playback
# puts on cancel -> silence. The measured worst case is reported (~20 ms).
CUT_WINDOW_MS = 100
DEVICE_MS = 20
LATE_WINDOW_S = 1.5  # after a cut, where its reply's tone is looked for (the reply is REPLY_MS long)
STUCK_AFTER_S = 5.0
# Share of cuts made at once, before the app has even heard of the reply (response.created): a stop (the stop
# key, the tray, `confide --stop`); the reply is cut the moment it is announced. A question typed that early:
# test_a_question_typed_before_the_last_reply_is_announced.
RIGHT_AWAY = 0.1  # not back to listening by then: stuck
FRAME = 480  # 10 ms at 48 kHz


def engine_counts(app) -> dict:
    """The engine's own asyncio task and thread counts (it prints them on SIGUSR1 into its log)."""
    supervisor = app._supervisor
    before = supervisor.log_path.read_text(encoding="utf-8").count('"event": "counts"')
    os.kill(supervisor.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in supervisor.log_path.read_text(encoding="utf-8").splitlines()
                 if '"event": "counts"' in line]
        if len(lines) > before:
            return json.loads(lines[-1][lines[-1].index("{"):])
        assert time.monotonic() < deadline, "the engine did not report its counts"
        time.sleep(0.02)


def settle(qtbot, app) -> None:
    """Quiet until every cut reply has been settled (its heard text came back and was recorded)."""
    pump(qtbot, lambda: app.controller.state is AppState.LISTENING and not app.controller._facts.replies, 10,
         "the cut replies to settle")
    qtbot.wait(300)


def test_barge_in_storm(pulse_audio, qtbot, tmp_path, monkeypatch):
    rng = random.Random(SEED)
    with tone_app(qtbot, tmp_path, monkeypatch, ENGINE_ARGS) as app:
        seen = Seen(app)
        controller = app.controller
        # One whole reply first: every lazily started thread (history saver, ...) exists before counting.
        controller.submit_text("question 0")
        pump(qtbot, lambda: controller.state is AppState.SPEAKING, 10, "the first reply")
        pump(qtbot, lambda: controller.state is AppState.LISTENING, 10, "the first reply to end")
        settle(qtbot, app)
        threads_before, tasks_before, engine_before = thread_names(), link_task_count(app), engine_counts(app)

        asked: dict[int, float] = {}  # question -> when asked
        cuts: dict[int, tuple[float, str]] = {}  # question -> (when the cut was decided, how)
        cycle_s, stuck, unannounced = [], 0, 0
        device_ms: dict[int, float] = {}  # question -> the speaker's output latency when it was cut
        with pulse_audio.record_speaker() as heard:
            n = 1
            asked[n] = time.monotonic()
            controller.submit_text(f"question {n}")
            while n <= INTERRUPTIONS:
                began = asked[n]
                if rng.random() < RIGHT_AWAY:
                    how = "stop"
                    unannounced += 1
                else:
                    pump(qtbot, lambda: len(seen.created) > n, 5, f"reply {n} to be announced")
                    qtbot.wait(rng.randrange(0, REPLY_MS + 50))  # from before the first sound to near the end
                    how = rng.choice(("barge-in", "stop", "typing"))
                if how == "barge-in" and controller.state is not AppState.SPEAKING:
                    how = "stop"  # the detector listens only while a reply plays
                cuts[n] = (time.monotonic(), how)
                device_ms[n] = app.speaker.output_delay_ms  # what the device holds: no one can take it back
                if how == "barge-in":  # what MicRouter does when the detector hears the person
                    response_id = app.speaker.playing
                    app.speaker.cancel(response_id)
                    app.bridge.barge_in.emit(response_id, time.monotonic())
                    # A person's: the engine would hear them (the tone engine hears nobody, and two barge-ins
                    # in a row that nobody followed turn the app half-duplex).
                    app.self_interruptions.speech_heard()
                elif how == "stop":  # the stop hotkey, the tray, `confide --stop`
                    controller.stop_speaking()
                else:  # the person types the next question over the reply
                    asked[n + 1] = time.monotonic()
                    controller.submit_text(f"question {n + 1}")
                if how != "typing":
                    try:
                        pump(qtbot, lambda: controller.state is AppState.LISTENING, STUCK_AFTER_S, "listening")
                    except AssertionError:
                        stuck += 1
                        controller.stop_speaking()
                    # A pause before the next question: a cut reply that played on would show in it.
                    qtbot.wait(rng.randrange(60, 150))
                    asked[n + 1] = time.monotonic()  # after the last cut, one more, heard to the end
                    controller.submit_text(f"question {n + 1}")
                cycle_s.append(time.monotonic() - began)
                n += 1
            final = n
            pump(qtbot, lambda: controller.state is AppState.SPEAKING, 10, "the last reply to play")
            pump(qtbot, lambda: controller.state is AppState.LISTENING, 10, "the last reply to end")
            settle(qtbot, app)
            audio = heard.audio()

            # --- what the speaker played -------------------------------------------------------------
            tones = tones_per_frame(audio)
            frame_time = heard.time_of(0) + np.arange(len(tones)) * FRAME / heard.rate
        late_ms, heard_before_cut, late_samples = [], 0, 0
        for q, (cut_at, _how) in cuts.items():
            # This reply's tone, from its question until the next question with the same tone, and at most
            # LATE_WINDOW_S after the cut: the whole reply is REPLY_MS long, so a cut one playing on shows
            # within it, while in two CI runs on a loaded machine (~100 underruns) the recording's clock slid
            # enough that the first frame of the next reply with the same tone (~4 s later) fell inside.
            window = ((frame_time >= asked[q]) & (frame_time < asked.get(q + TONES, np.inf))
                      & (frame_time < cut_at + LATE_WINDOW_S))
            playing = window & tone_frames(tones, q)
            if np.any(playing & (frame_time < cut_at)):
                heard_before_cut += 1
            if np.any(playing):
                # Each frame's time is when its first sample reached us: the frame ends 10 ms later.
                late_ms.append(1000 * (frame_time[playing][-1] + 0.01 - cut_at))
            late = playing & (frame_time > cut_at + (CUT_WINDOW_MS + max(0.0, device_ms[q] - DEVICE_MS)) / 1000)
            late_samples += int(np.count_nonzero(late)) * FRAME
        last = tone_frames(tones, final)[frame_time >= asked[final]]

        # --- nothing left behind ----------------------------------------------------------------------
        threads_after, tasks_after, engine_after = thread_names(), link_task_count(app), engine_counts(app)
        turns = app.history.turns
        errors = [text for _, text, error in seen.messages if error]

    kinds = [how for _, how in cuts.values()]
    figures = {
        "interruptions": len(cuts), "barge_in": kinds.count("barge-in"), "stop": kinds.count("stop"),
        "typing": kinds.count("typing"), "stop_before_announced": unannounced, "stuck": stuck,
        "heard_before_cut": heard_before_cut,
        "cancelled_audio_samples_heard": late_samples, "cut_window_ms": CUT_WINDOW_MS,
        "device_latency_ms_max": round(max(device_ms.values()), 1),
        "cut_to_last_sample_ms_p50": round(statistics.median(late_ms), 1) if late_ms else None,
        "cut_to_last_sample_ms_max": round(max(late_ms), 1) if late_ms else None,
        "leaked_threads": len(threads_after) - len(threads_before),
        "leaked_link_tasks": tasks_after - tasks_before,
        "leaked_engine_tasks": engine_after["tasks"] - engine_before["tasks"],
        "leaked_engine_threads": engine_after["threads"] - engine_before["threads"],
        "s_per_interruption": round(statistics.mean(cycle_s), 3),
        "errors_shown": len(errors),
    }
    report("storm", json.dumps(figures))
    assert stuck == 0 and errors == [], errors
    assert late_samples == 0, figures
    assert heard_before_cut > INTERRUPTIONS // 3, figures  # the check saw the replies: many were heard, then cut
    assert np.count_nonzero(last) * 10 > REPLY_MS - 30, "the last reply did not play to its end"
    assert threads_after == threads_before
    assert tasks_after == tasks_before
    assert engine_after == engine_before
    # The conversation kept every question once, and every cut reply as what was heard of it.
    questions = [t.text for t in turns if t.role == "user"]
    assert questions == [f"question {q}" for q in range(0, final + 1)]
    assert len({t.item_id for t in turns}) == len(turns)
    cut_replies = [t for t in turns if t.role == "assistant" and t.interrupted]
    assert len(cut_replies) <= INTERRUPTIONS and not [t for t in turns if t.role == "assistant" and not t.text
                                                       and not t.interrupted]


def test_a_stop_before_the_reply_is_announced_cuts_it_when_it_is(qtbot):
    """The storm's cuts "before announced", in small: the stop key pressed between asking and the engine's
    response.created. The reply is cut on arrival (silenced, cancelled, truncated once its item is known),
    and the next question's reply is not."""
    rig = Rig()
    rig.controller.engine_connected()
    rig.controller.submit_text("what time is it")
    rig.controller.stop_speaking()
    assert rig.speaker.cancelled == [UNANNOUNCED] and rig.state is AppState.IDLE
    rig.event("response.created", response={"id": "resp_1"})
    assert rig.speaker.cancelled == [UNANNOUNCED, "resp_1"] and rig.state is AppState.IDLE
    assert rig.engine.of_type("response.cancel")[-1]["response_id"] == "resp_1"
    rig.event("response.output_item.added", response_id="resp_1", item={"id": "item_1"})
    truncate = rig.engine.of_type("conversation.item.truncate")[-1]
    assert (truncate["item_id"], truncate["audio_end_ms"]) == ("item_1", rig.speaker.heard_ms_value)
    rig.controller.playback_started("resp_1")  # its audio, should any come, cannot claim the speaker
    rig.event("response.done", response={"id": "resp_1", "status": "cancelled"})
    rig.event("conversation.item.retrieved", item={"id": "item_1", "content": [{"transcript": ""}]})
    assert rig.state is AppState.IDLE and not rig.controller._facts.replies
    rig.controller.submit_text("and now?")
    rig.event("response.created", response={"id": "resp_2"})
    assert rig.speaker.cancelled == [UNANNOUNCED, "resp_1"] and rig.state is AppState.THINKING


def test_the_speaker_refuses_the_reply_stopped_before_it_was_announced():
    """Its audio comes straight from the network and may reach the speaker before or after the stop."""
    speaker = Speaker()  # no device needed: what it accepts is decided before anything plays
    tone = np.zeros(2400, np.float32)
    assert speaker.cancel(UNANNOUNCED) == 0.0  # nothing of it here yet: the next new reply is the one
    assert not speaker.push("resp_1", tone) and not speaker.push("resp_1", tone)
    assert speaker.push("resp_2", tone)  # only that one
    speaker.cancel(UNANNOUNCED)  # its audio came first: it is the reply queued now
    assert speaker.playing is None and not speaker.push("resp_2", tone)
    assert speaker.push("resp_3", tone)
    speaker.cancel("resp_3")
    speaker.cancel(UNANNOUNCED)
    speaker.cancel("resp_4")  # announced after all, and cut by its id: nothing else is refused
    assert speaker.push("resp_5", tone)


def finished_before_its_first_sound(rig: Rig, response_id: str) -> None:
    rig.event("response.created", response={"id": response_id})
    rig.event("response.output_item.added", response_id=response_id, item={"id": f"item_{response_id}"})
    rig.event("response.output_audio.delta", response_id=response_id, item_id=f"item_{response_id}")
    rig.event("response.done", response={"id": response_id, "status": "completed"})


def test_a_reply_finished_before_its_first_sound_is_still_heard_and_can_be_stopped(qtbot):
    """A short reply is often complete before its first sample plays: it still claims the speaker (the
    barge-in detector listens) and a stop still finds it."""
    rig = Rig()
    rig.controller.engine_connected()
    rig.controller.submit_text("hi")
    finished_before_its_first_sound(rig, "resp_1")
    rig.controller.playback_started("resp_1")
    assert rig.state is AppState.SPEAKING and rig.mic.guarding == "resp_1"
    rig.controller.playback_drained("resp_1")
    assert rig.state is AppState.IDLE and not rig.controller._facts.replies

    rig.controller.submit_text("and again")
    finished_before_its_first_sound(rig, "resp_2")
    rig.controller.stop_speaking()
    assert rig.speaker.cancelled == ["resp_2"]
    assert rig.engine.of_type("conversation.item.truncate")[-1]["item_id"] == "item_resp_2"
    rig.controller.playback_started("resp_2")  # too late: it was stopped
    assert rig.state is AppState.IDLE
    rig.event("conversation.item.retrieved", item={"id": "item_resp_2", "content": [{"transcript": "Hel"}]})
    assert rig.history.turns["item_resp_2"] == ("assistant", "Hel", True, False)
    assert not rig.controller._facts.replies


def test_a_question_typed_before_the_last_reply_is_announced(pulse_audio, qtbot, tmp_path, monkeypatch):
    """Two questions typed back to back, the second before the app has heard of the first one's reply: the
    engine is asked to stop that one first (else it refuses the second: one response at a time), nothing of it
    plays, and the second question is answered. The app cannot silence that reply by its id (it has none yet):
    the engine stops it, before its first sound as long as the cancel gets there first. Here the first sound
    comes 300 ms after a reply starts, as with the real engine; the cancel follows the question by a few ms."""
    engine_args = [*ENGINE_ARGS[:-1], "300"]
    with tone_app(qtbot, tmp_path, monkeypatch, engine_args) as app:
        seen = Seen(app)
        controller = app.controller
        second_at: dict[int, float] = {}
        with pulse_audio.record_speaker() as heard:
            for first in range(1, 16, 2):  # 8 pairs: all with tones of their own
                controller.submit_text(f"question {first}")
                second_at[first] = time.monotonic()
                controller.submit_text(f"question {first + 1}")
                pump(qtbot, lambda: controller.state is AppState.LISTENING and not controller._facts.replies
                     and app.history.turns[-1].text.startswith(f"Answer to question {first + 1}."), 10,
                     f"the answer to question {first + 1}")
            tones = tones_per_frame(heard.audio())
            frame_time = heard.time_of(0) + np.arange(len(tones)) * FRAME / heard.rate
        for first, typed_at in second_at.items():
            assert not np.any(tone_frames(tones, first) & (frame_time > typed_at + CUT_WINDOW_MS / 1000))
            assert np.count_nonzero(tone_frames(tones, first + 1)) * 10 > REPLY_MS - 30  # heard in full
        assert [text for _, text, error in seen.messages if error] == []
        replies = [t.text for t in app.history.turns if t.role == "assistant" and not t.interrupted]
        assert replies == [f"Answer to question {q}. and more. and more." for q in range(2, 17, 2)]
