"""Recording what the canceller feeds the barge-in detector's second ear, and replaying it offline
(`confide bench --aec --aec-record DIR`, `confide bench --aec-replay DIR`).

First on the synthetic small speaker of test_echo_excess.py through the real canceller (in memory, no
devices), then on the PulseAudio harness's loopback echo path, recorded as the bench records it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app.audio.echo_canceller import FRAME, EchoCanceller
from app.audio.echo_reference import PlayedAudio
from app.bench import echo_replay, echo_trials
from app.bench.command import main as bench
from app.bench.echo_recording import EchoRecorder, EchoRecording
from tests.harness.echo_path import acoustic_echo
from tests.harness.pulse import PulseHarness, pulse_audio  # noqa: F401  (pytest fixture)
from tests.small_speaker import REPLY, feed_canceller, small_speaker
from tests.speakers import say

REPLIES = 3  # the reply played back to back, and marked as this many replies


class _ExcessHeard:
    """The canceller's on_audio: what the barge-in detector would have read of the excess, per frame."""

    def __init__(self):
        self.canceller: EchoCanceller | None = None
        self.excess: list[np.ndarray | None] = []

    def __call__(self, _chunk: np.ndarray, _time: float) -> None:
        self.excess.append(self.canceller.last_excess)


@pytest.fixture(scope="module")
def small_speaker_run() -> tuple[EchoRecording, list[np.ndarray | None]]:
    """The small speaker's echo of a long reply through the canceller, recorded; and what the detector
    read of the excess live."""
    reply = np.tile(say(REPLY, "flite:slt"), 2)
    echo = small_speaker(reply)
    played, heard = PlayedAudio(), _ExcessHeard()
    heard.canceller = canceller = EchoCanceller(played, heard)
    recorder = EchoRecorder(canceller).start()
    feed_canceller(canceller, played, reply, echo)
    recorder.stop()
    recording = recorder.recording(echo_rms=echo_trials._rms(echo))
    edges = np.linspace(0, len(recording.near), REPLIES + 1).astype(int)
    return dataclasses.replace(recording, replies=np.stack([edges[:-1], edges[1:]], axis=1)), heard.excess


@pytest.fixture(scope="module")
def users() -> list[np.ndarray]:
    return [say(text, voice) for text, voice in (("Wait, stop, that is enough.", "flite:awb"),
                                                 ("Hold on, I have a question.", "flite:rms"))]


def test_the_tap_holds_what_the_excess_was_fed_and_a_replay_gives_what_the_detector_read(small_speaker_run):
    recording, live = small_speaker_run
    assert len(recording.near) == len(live) > 0  # every frame cancelled, nothing else
    assert recording.aligned.any() and not recording.aligned[:100].any()  # the delay is measured first
    assert recording.has_far[recording.aligned].all()
    replayed = echo_replay.excess_heard(recording, recording.near)
    assert [excess is not None for excess in replayed] == [excess is not None for excess in live]
    assert not any(excess is not None for excess in live[:200])  # and the path learnt
    assert all(np.array_equal(replayed[i], live[i]) for i, excess in enumerate(live) if excess is not None)


def test_a_recording_is_saved_and_loaded_unchanged(small_speaker_run, tmp_path):
    recording, _live = small_speaker_run
    recording.save(tmp_path / "small.npz")
    loaded = EchoRecording.load(tmp_path / "small.npz")
    for name in ("near", "far", "has_far", "aligned", "replies"):
        assert np.array_equal(getattr(loaded, name), getattr(recording, name)), name
    assert loaded.near.dtype == np.float32 and loaded.echo_rms == recording.echo_rms


def test_replay_hears_no_echo_alone_and_hears_a_person_talking_over_the_echo(small_speaker_run, users):
    recording, _live = small_speaker_run
    results = echo_replay.replay({"small": recording}, users, [0.0, -6.0])
    assert results["replies"] == REPLIES and results["false_onsets"] == 0, results
    assert results["interruptions"] == REPLIES and results["paths"]["small"] == {
        key: value for key, value in results.items() if key != "paths"}
    # The first reply's person talks before the path is learnt (the excess is not listened to yet): missed.
    assert results["missed"] == 1 and results["detect_rate_300ms"] == pytest.approx(2 / 3, abs=1e-3), results
    assert 0 < results["detect_ms_p50"] <= 300, results
    assert results["interruptions_minus_6db"] == REPLIES and "detect_rate_250ms_minus_6db" in results


def test_constants_are_overridden_for_the_replay_only():
    overrides = echo_replay.parse_overrides(["OVERESTIMATE=4", "WARM_UP_FRAMES = 200", "STEP=0.2"])
    assert overrides == {"OVERESTIMATE": 4.0, "WARM_UP_FRAMES": 200, "STEP": 0.2}
    from app.audio import echo_excess, linear_echo

    before = echo_excess.OVERESTIMATE, linear_echo.STEP
    with echo_replay.overridden(overrides):
        assert echo_excess.OVERESTIMATE == 4.0 and echo_excess.WARM_UP_FRAMES == 200 and linear_echo.STEP == 0.2
    assert (echo_excess.OVERESTIMATE, linear_echo.STEP) == before
    for wrong, says in (("OVERESTIMATE", "NAME=VALUE"), ("LEAD=10", "LEAD"), ("WARM_UP_FRAMES=1.5", "integer"),
                        ("NO_SUCH=1", "OVERESTIMATE"), ("GATE_DB=loud", "number")):
        with pytest.raises(ValueError, match=says):
            echo_replay.parse_overrides([wrong])


def test_a_missing_or_broken_recording_is_named_in_one_line(small_speaker_run, tmp_path):
    recording, _live = small_speaker_run
    with pytest.raises(ValueError, match="absent.npz: no such echo recording"):
        EchoRecording.load(tmp_path / "absent.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a recording")
    recording.save(tmp_path / "whole.npz")
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    np.savez(tmp_path / "partial.npz", near=recording.near)
    np.savez(tmp_path / "misshapen.npz", near=recording.near[:, :100], far=recording.far, has_far=recording.has_far,
             aligned=recording.aligned, replies=recording.replies, echo_rms=1.0)
    for name in ("garbage.npz", "cut.npz", "partial.npz", "misshapen.npz"):
        with pytest.raises(ValueError, match=f"{name}: not an echo recording"):
            EchoRecording.load(tmp_path / name)


def test_the_bench_says_what_is_wrong_with_its_replay_input_without_a_traceback(tmp_path, capsys):
    def run(*argv: str) -> str:
        assert bench(list(argv)) == 2
        error = capsys.readouterr().err
        assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
        return error

    assert "no echo recordings" in run("--aec-replay", str(tmp_path))
    assert "no such folder" in run("--aec-replay", str(tmp_path / "absent"))
    (tmp_path / "loopback.npz").write_bytes(b"\x00" * 64)
    assert "loopback.npz: not an echo recording" in run("--aec-replay", str(tmp_path))
    assert "NO_SUCH" in run("--aec-replay", str(tmp_path), "--aec-replay-set", "NO_SUCH=1")
    assert "add --aec" in run("--aec-record", str(tmp_path))
    assert "go with --aec-replay" in run("--aec-replay-db", "-6")


# --- the real path on the harness ----------------------------------------------------------------


def test_echo_only_replies_recorded_on_the_loopback_path_replay_without_false_onsets(pulse_audio: PulseHarness,
                                                                                   users, tmp_path):
    """As `confide bench --aec --aec-record` records it (measure_path), on three replies."""
    replies = [say(text, voice) for text, voice in zip(echo_trials.REPLY_TEXTS, echo_trials.REPLY_VOICES[1:])]
    script = echo_trials.EchoScript(replies[:REPLIES], users)
    saved = tmp_path / "loopback.npz"
    results = echo_trials.measure_path(pulse_audio, script, REPLIES, 0,
                                       acoustic_echo(pulse_audio, latency_ms=60, gain_db=-6.0), record_to=saved)
    recording = echo_replay.load_recordings(tmp_path)["loopback"]
    assert recording.echo_rms == results["echo"]["echo_rms"] > 0.01, "the echo path carried no echo"
    assert len(recording.replies) == REPLIES and np.all(np.diff(recording.replies, axis=1) > 100)
    assert recording.near.shape[1] == FRAME and np.abs(recording.near).max() > 0.01
    # The delay was measured and the path learnt within the first reply: the second ear was listened to.
    assert recording.has_far.any() and recording.aligned.sum() > 300, recording.aligned.sum()
    figures = echo_replay.replay({"loopback": recording}, users, [0.0])
    assert figures["replies"] == REPLIES and figures["false_onsets"] == 0, figures
