"""Echo cancellation on open speakers, measured on the harness's echo path.

The app's own audio path as ConfideApp wires it (Speaker → PlayedAudio → Microphone → EchoCanceller →
MicRouter with the barge-in detector), on real PortAudio streams, with the virtual speaker's sound
coming back into the virtual microphone (tests/harness/echo_path.py). No engine and no Qt: replies are
natural speech (Piper, flite) pushed into the speaker as a reply's audio deltas would be.

- echo only: replies play to the end with nobody talking; every barge-in is a false one; ERLE is the
  microphone's echo power over what is left of it after cancellation.
- double talk: a person speaks over a reply at the echo's level (and 6 dB under it); detection is
  the time from their speech reaching the microphone to the detector silencing the speaker.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.audio.barge_in_detector import BargeInDetector
from app.audio.capture import PROTOCOL_RATE, Microphone
from app.audio.echo_canceller import EchoCanceller
from app.audio.echo_reference import PlayedAudio
from app.audio.playback import Speaker
from app.audio.self_interruptions import IN_A_ROW
from app.audio.voice_activity import VoiceActivity
from app.bench.echo_recording import EchoRecorder
from app.mic_router import MicRouter
from app.session_setup import vad_threshold
from app.settings import ConversationSettings

# Replies: natural sentences in the natural voices (formant speech defeats adaptive filters unfairly).
REPLY_TEXTS = (
    "Sure. The train to the airport leaves every twenty minutes from platform three.",
    "That depends on the weather, but most people take about four hours to reach the top.",
    "Here is a simple recipe: toast the bread, rub it with garlic, and add ripe tomatoes.",
    "The meeting moved to Thursday afternoon, and the slides are already in the shared folder.",
    "Bicycles stay upright mostly because of steering, not because of the spinning wheels.",
    "I would water the basil every other day and keep it somewhere with plenty of sun.",
)
REPLY_VOICES = ("piper:joe", "flite:slt", "flite:awb", "flite:rms")
USER_LINES = ("Wait, stop, that is enough.", "Hold on, I have a question.", "No, sorry, go back.",
              "Okay, thanks, that is all.")
USER_VOICES = ("flite:awb", "piper:joe", "flite:slt", "flite:rms")
DETECT_WITHIN_S = 0.3  # the target: a person as loud as the echo is heard within this
REPLY_TIMEOUT_S = 30.0


@dataclass
class Reply:
    fired: bool = False
    fired_at: float | None = None
    heard_by: str = ""  # which of the detector's ears fired (BargeInDetector.heard_by)
    drained: threading.Event = field(default_factory=threading.Event)


class EchoRig:
    """The app's microphone and speaker path, echo cancellation and barge-in detector included."""

    def __init__(self, echo_cancellation: bool = True, threshold: float | None = None):
        self.played = PlayedAudio()
        self._replies: dict[str, Reply] = {}
        self.speaker = Speaker(on_played=self.played.played, on_drained=self._on_drained)
        self.vad = VoiceActivity()
        self.router = MicRouter(send_audio=lambda _chunk: None, speech_onset=lambda chunk: self.detector.feed(chunk),
                                reset_speech_onset=lambda: self.detector.reset(), silence_speaker=self.speaker.cancel,
                                on_barge_in=self._on_barge_in)
        self.canceller = EchoCanceller(self.played, self.router.on_audio, enabled=echo_cancellation)
        # As the app sets it at the default sensitivity.
        self.detector = BargeInDetector(self.vad, self.canceller, vad_threshold(ConversationSettings().vad_sensitivity)
                                        if threshold is None else threshold)
        self.microphone = Microphone(on_audio=self.canceller.process)
        self._count = 0
        self.last_fired_at = 0.0  # when the detector last silenced a reply

    def start(self) -> EchoRig:
        if not (self.speaker.start() and self.microphone.start()):
            raise RuntimeError(f"audio devices: {self.speaker.last_error or self.microphone.last_error}")
        return self

    def stop(self) -> None:
        self.microphone.stop()
        self.speaker.stop()

    def play(self, audio: np.ndarray) -> tuple[str, Reply]:
        """Start a reply (24 kHz speech); returns at once."""
        self._count += 1
        response_id = f"resp_{self._count}"
        reply = self._replies[response_id] = Reply()
        self.router.guard(response_id)
        self.speaker.push(response_id, audio)
        self.speaker.finish(response_id)
        return response_id, reply

    def wait(self, response_id: str, timeout: float = REPLY_TIMEOUT_S) -> Reply:
        reply = self._replies[response_id]
        deadline = time.monotonic() + timeout
        while not (reply.fired or reply.drained.is_set()) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.router.guard(None)
        return reply

    def _on_drained(self, response_id: str) -> None:
        reply = self._replies.get(response_id)
        if reply is not None:
            reply.drained.set()

    def _on_barge_in(self, response_id: str, _onset: float) -> None:
        reply = self._replies.get(response_id)
        if reply is not None:
            reply.fired, reply.fired_at, reply.heard_by = True, time.monotonic(), self.detector.heard_by
            self.last_fired_at = reply.fired_at


SOUND = 0.01  # of a recording's peak: quieter samples are the silence around and between words


def _rms(audio: np.ndarray) -> float:
    loud = audio[np.abs(audio) > SOUND * max(1e-9, float(np.abs(audio).max()))]
    return float(np.sqrt(np.mean(np.square(loud)))) if loud.size else 0.0


def line_onset(line: np.ndarray) -> int:
    """The sample where a person's line begins to sound."""
    loud = np.flatnonzero(np.abs(line) > SOUND * np.abs(line).max())
    return int(loud[0]) if loud.size else 0


def line_gain(echo_rms: float, line: np.ndarray, relative_db: float) -> float:
    """What a line is scaled by to be spoken `relative_db` against the echo's level."""
    return echo_rms * 10 ** (relative_db / 20) / max(_rms(line), 1e-9)


def echo_only(rig: EchoRig, pulse, replies: list[np.ndarray], pause_s: float = 0.3,
              recorder: EchoRecorder | None = None) -> dict:
    """Play every reply to its end; count barge-ins (all false), measure ERLE and the echo's level. A
    recorder (started on the rig's canceller) is told where each reply's frames are."""
    rig.canceller.monitor.reset_totals()
    false_barge_ins, echo_levels, heard_by = 0, [], {}
    in_a_row, half_duplex_at = 0, None
    for index, audio in enumerate(replies, 1):
        span = recorder.reply() if recorder is not None else contextlib.nullcontext()
        with pulse.record_mic_feed() as heard, span:
            response_id, _ = rig.play(audio)
            reply = rig.wait(response_id)
        false_barge_ins += reply.fired
        if reply.fired:
            heard_by[reply.heard_by] = heard_by.get(reply.heard_by, 0) + 1
        # Nobody speaks here, so the app's engine would hear nobody after each: SelfInterruptions' count.
        in_a_row = in_a_row + 1 if reply.fired else 0
        if in_a_row >= IN_A_ROW and half_duplex_at is None:
            half_duplex_at = index
        echo_levels.append(_rms(heard.audio()))
        time.sleep(pause_s)
    return {"replies": len(replies), "false_barge_ins": false_barge_ins, "false_barge_ins_heard_by": heard_by,
            "half_duplex_at_reply": half_duplex_at, "erle_db": rig.canceller.monitor.erle_db(),
            "echo_rms": float(np.median(echo_levels)), "excess_margin_db": rig.canceller.excess_margin_db}


@dataclass(frozen=True)
class DoubleTalk:
    detected: bool
    detect_ms: float | None  # from the person's speech reaching the microphone to the speaker silenced
    heard_by: str = ""  # which of the detector's ears heard them


def double_talk(rig: EchoRig, pulse, reply: np.ndarray, user: np.ndarray, gain: float,
                after_s: float) -> DoubleTalk:
    """Speak `user` (24 kHz, scaled by `gain`) over `reply`, `after_s` into it."""
    from tests.harness.pulse import RATE, find_signal, to_rate

    spoken = to_rate(user * gain, PROTOCOL_RATE)
    with pulse.record_mic_feed() as heard:
        response_id, _ = rig.play(reply)
        time.sleep(after_s)
        feed = pulse.feed_mic(spoken, RATE)
        outcome = rig.wait(response_id)
        feed.wait(10)
    if not outcome.fired:
        return DoubleTalk(False, None)
    # Where the person's speech is in what the microphone heard (under the echo), and its first sound.
    at, _score = find_signal(heard.audio(), spoken)
    onset = heard.time_of(at + line_onset(spoken))
    return DoubleTalk(True, round((outcome.fired_at - onset) * 1000, 1), outcome.heard_by)


@dataclass
class EchoScript:
    replies: list[np.ndarray]  # 24 kHz speech, played as replies
    users: list[np.ndarray]  # 24 kHz speech, the person talking over them


def synthesize_script(source_root) -> EchoScript:
    """Every reply text in several voices, every user line; in a child process (see spoken_lines)."""
    from app.bench.spoken_lines import synthesize

    reply_lines = [(text, REPLY_VOICES[(i + j) % len(REPLY_VOICES)]) for j in range(2)
                   for i, text in enumerate(REPLY_TEXTS)]
    script = synthesize(0, reply_lines + _user_lines(), source_root)
    audio = [line.audio for line in script.lines]
    return EchoScript(audio[:len(reply_lines)], audio[len(reply_lines):])


def synthesize_users(source_root) -> list[np.ndarray]:
    """Only the person's lines of synthesize_script, for replaying recordings (echo_replay.py)."""
    from app.bench.spoken_lines import synthesize

    return [line.audio for line in synthesize(0, _user_lines(), source_root).lines]


def _user_lines() -> list[tuple[str, str]]:
    return list(zip(USER_LINES, USER_VOICES))


def measure_path(pulse, script: EchoScript, replies: int, doubletalk_trials: int, echo_path,
                 rig: EchoRig | None = None, record_to: Path | None = None) -> dict:
    """Echo only, then double talk at the echo's level and 6 dB under it, on one echo path (a context
    manager from tests.harness.echo_path). A fresh canceller unless `rig` is given. With `record_to`,
    what the canceller fed the excess over the echo-only replies is saved there (echo_recording.py)."""
    own_rig = rig is None
    rig = rig or EchoRig().start()
    recorder = EchoRecorder(rig.canceller).start() if record_to is not None else None
    try:
        with echo_path:
            time.sleep(0.5)
            echo = echo_only(rig, pulse, [script.replies[i % len(script.replies)] for i in range(replies)],
                             recorder=recorder)
            if recorder is not None:
                recorder.stop()
                recorder.recording(echo["echo_rms"]).save(record_to)
            results = {"echo": echo}
            for name, relative_db in (("equal", 0.0), ("minus_6db", -6.0)):
                trials = []
                for i in range(doubletalk_trials):
                    user = script.users[i % len(script.users)]
                    trials.append(double_talk(rig, pulse, script.replies[(i + 3) % len(script.replies)], user,
                                              line_gain(echo["echo_rms"], user, relative_db), 0.6 + 0.2 * (i % 4)))
                    time.sleep(0.4)
                results[name] = trials
        results["cpu_ms_per_10ms"] = round(1000 * rig.canceller.cpu_s / max(1, rig.canceller.frames_cancelled), 3)
        results["delay_drift_ppm"] = round(rig.canceller.delay_drift_ppm, 1)
        results["reference_placements"] = rig.played.placements
    finally:
        if recorder is not None:
            recorder.stop()
        if own_rig:
            rig.stop()
    return results


def path_figures(results: dict) -> dict:
    echo = results["echo"]
    figures = {"erle_db": echo["erle_db"], "replies": echo["replies"], "false_barge_ins": echo["false_barge_ins"],
               "false_barge_ins_heard_by": echo["false_barge_ins_heard_by"],
               "false_bargein_rate": round(echo["false_barge_ins"] / max(1, echo["replies"]), 4),
               # The reply at which the app would fall back to half-duplex (false barge-ins in a row; the
               # detector here does not: the figures are its own), or None.
               "half_duplex_at_reply": echo["half_duplex_at_reply"],
               "echo_rms_dbfs": round(20 * np.log10(max(echo["echo_rms"], 1e-9)), 1),
               "aec_cpu_ms_per_10ms": results["cpu_ms_per_10ms"],
               # The streams' clocks as the canceller saw them: the drift it followed, and how often the
               # reference was placed afresh (new stream, underrun, stall).
               "delay_drift_ppm": results["delay_drift_ppm"], "reference_placements": results["reference_placements"],
               "excess_margin_db_after_echo_only": echo["excess_margin_db"]}
    for name in ("equal", "minus_6db"):
        trials = results[name]
        # A cut before the person spoke is the echo's doing (a false barge-in), not a detection.
        times = [t.detect_ms for t in trials if t.detected and t.detect_ms >= 0]
        suffix = "" if name == "equal" else "_minus_6db"
        figures[f"doubletalk_detect_rate{suffix}"] = round(
            sum(ms <= DETECT_WITHIN_S * 1000 for ms in times) / max(1, len(trials)), 3)
        figures[f"doubletalk_detected_at_all{suffix}"] = f"{len(times)}/{len(trials)}"
        # Each trial's, in order: None where never heard, negative where cut before the person spoke (the
        # rate above is a trial in twelve a step; these say how far a miss was from counting).
        figures[f"doubletalk_detect_ms_each{suffix}"] = [
            round(t.detect_ms, 1) if t.detected else None for t in trials]
        early = [t for t in trials if t.detected and t.detect_ms < 0]
        figures[f"doubletalk_cut_before_speech{suffix}"] = len(early)
        if early:  # which signal heard the echo as the person
            figures[f"doubletalk_cut_before_speech_heard_by{suffix}"] = {
                by: [t.heard_by for t in early].count(by) for by in sorted({t.heard_by for t in early})}
        figures[f"doubletalk_detect_ms_p50{suffix}"] = round(float(np.median(times)), 1) if times else None
        heard_by = [t.heard_by for t in trials if t.detected and t.detect_ms >= 0]
        figures[f"doubletalk_heard_by{suffix}"] = {by: heard_by.count(by) for by in sorted(set(heard_by))}
    return figures
