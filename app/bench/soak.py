"""`confide bench --soak`: an hour of conversation, simulated in minutes, for memory growth and latency drift.

What is real: the engine (`python -m engine serve` with the embedded models, started and watched by the
app's own EngineSupervisor), the app's RealtimeLink, Controller and MicRouter, and the conversation
history saved to disk after every turn as the app saves it. Lines are spoken by the test voices; screen
questions send a 1920×1080 screenshot full of text, which the engine reads; replies are generated in full
(LLM and speech) unless cut.

What is accelerated, so that an hour fits in CI (real ASR, LLM and TTS on two cores run near real time):
- speech is pushed into the microphone router `SPEECH_SPEEDUP` times faster than real time (the silence
  between lines goes at the real-time pace, so the engine's turn detector waits its real silence window);
- replies play on a simulated speaker `PLAYBACK_SPEEDUP` times faster than real time;
- the person's thinking pauses and the long idle stretches of a day are added to the simulated clock and
  skipped, not waited for;
- about a quarter of the replies are interrupted early: the next line is spoken over them (barge-in:
  the speaker goes silent, `response.cancel` and `conversation.item.truncate` with what was heard).

The simulated clock advances by what a person would live through: the pause before speaking, the line,
the wait for the reply, the reply as far as it was heard. Each turn's latency is the real wall time from
the end of its speech at the microphone to the reply's first audio delta at the app (silence window,
transcription, prefill, first phrase, first speech chunk and the socket); the drift figure compares its
p95 over the first ten simulated minutes with the last ten, for spoken questions and interjections (screen
questions are reported apart: their wait is mostly reading the screenshot). The clock starts after a
warm-up that takes every path once (`WARM_UP`). Memory is the resident size of the app process (this one)
and of the engine, at the end of the first ten simulated minutes, half-way and at the end.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.bench.figures import p50, p95
from app.bench.process_load import memory_mb

SPEECH_SPEEDUP = 8.0
PLAYBACK_SPEEDUP = 8.0
WINDOW_S = 600.0  # the first and the last ten simulated minutes are compared
# Before the clock starts, every path once (a question, each screenshot, a cut reply), so that what
# warms up (caches, allocator arenas sized by the largest screenshot read) is not counted as growth.
WARM_UP = (("question", False), ("screen", False), ("question", True), ("screen", False), ("screen", False))
ENGINE_READY_TIMEOUT_S = 300.0
REPLY_TIMEOUT_S = 120.0
# The script, per turn (seeded): a screen question, a reply cut by the next line, an idle stretch after it.
SCREEN_SHARE = 0.05
CUT_SHARE = 0.25
IDLE_SHARE = 0.15
THINK_S = (2.0, 8.0)
IDLE_S = (60.0, 240.0)
CUT_AFTER_S = (0.3, 3.0)  # of the reply's audio heard before the person talks over it
SCREEN_SIZE = (1920, 1080)
_RESPONSE_LOG = re.compile(r"response (\S+) (completed|cancelled|incomplete|failed).*prefilled (\d+) tokens, (\d+) cached")


@dataclass
class SoakTurn:
    kind: str  # question | screen | barge-in (said over the previous reply)
    text: str
    voice: str
    sim_start_s: float  # when it was said, on the simulated clock
    warm_up: bool  # before the clock started
    eos_to_first_delta_ms: float | None = None
    response_id: str | None = None
    heard_ms: float = 0.0  # of its reply
    reply_ms: float = 0.0  # of its reply's audio received
    cut: bool = False  # its reply was interrupted by the next line
    answer: str = ""


def measure(minutes: float, seed: int, work_dir: Path, llm: str | None = None, progress=print) -> dict:
    """Run the soak; the figures as one dict (see `_figures`)."""
    from PySide6.QtCore import QCoreApplication

    from app.bench.command import INTERJECTIONS
    from app.bench.desktop import SOURCE_ROOT
    from app.bench.screen_trials import FACTS
    from app.bench.spoken_lines import synthesize, voice_for

    qt_app = QCoreApplication.instance() or QCoreApplication([])  # the controller's signals need an event loop
    progress("synthesising the spoken lines and the screenshots")
    screen_lines = [(fact.question, voice_for(i + 2)) for i, fact in enumerate(FACTS)]
    cut_lines = [(text, voice_for(i + 1)) for i, text in enumerate(INTERJECTIONS)]
    script = synthesize(12, screen_lines + cut_lines, SOURCE_ROOT)
    spoken = {"question": script.prompts, "screen": script.lines[:len(FACTS)],
              "barge-in": script.lines[len(FACTS):]}
    screens = [screenshot_png(fact.shown, i) for i, fact in enumerate(FACTS)]
    soak = _Soak(work_dir, llm, seed)
    try:
        progress("starting the engine")
        soak.start()
        progress(f"{minutes:g} simulated minutes of conversation")
        turns = soak.converse(minutes * 60, spoken, screens, progress)
        return _figures(soak, turns, minutes)
    finally:
        soak.stop()


class _Soak:
    """The app's conversation parts, wired as ConfideApp wires them, with simulated sound devices."""

    def __init__(self, work_dir: Path, llm: str | None, seed: int):
        from PySide6.QtCore import QTimer

        from app.bench.soak_devices import SimulatedMicrophone, SimulatedSpeaker
        from app.confide_app import _AUDIO_DONE, _Bridge, _EngineAdapter, _SavedHistory
        from app.controller import Controller, TalkSettings
        from app.engine_link.client import RealtimeLink
        from app.engine_link.supervisor import EngineSupervisor
        from app.history import ConversationHistory
        from app.mic_router import MicRouter
        from app.settings import Settings

        self.random = random.Random(seed)
        self._audio_done = _AUDIO_DONE
        self.work_dir = work_dir
        self.bridge = bridge = _Bridge()  # worker threads → the GUI thread, as in the app
        self._lock = threading.Lock()
        self.first_delta: dict[str, float] = {}  # response id -> arrival of its first audio delta
        self.created: dict[str, float] = {}  # response id -> response.created arrival
        self.done: set[str] = set()
        self.answers: dict[str, str] = {}
        self.engine_errors: list[dict] = []
        self.app_messages: list[str] = []
        self.items_in_engine: set[str] = set()
        self.samples: list[dict] = []

        self.history = ConversationHistory(work_dir / "history.json")
        self.saved_history = _SavedHistory(self.history, bridge.message.emit)
        self.supervisor = EngineSupervisor(["--seed", str(seed), *(["--llm", llm] if llm else [])],
                                           token_file=work_dir / "engine-token", log_dir=work_dir,
                                           on_ready=bridge.engine_ready.emit)
        self.link = RealtimeLink(on_event=self._on_link_event, on_status=bridge.link_status.emit,
                                 on_audio=self._on_link_audio)
        self.speaker = SimulatedSpeaker(PLAYBACK_SPEEDUP, bridge.playback_started.emit, bridge.playback_drained.emit)
        self.microphone = SimulatedMicrophone(lambda chunk, at: self.router.on_audio(chunk, at), SPEECH_SPEEDUP)
        self.router = MicRouter(self.link.send_audio, self.microphone.speech_onset, lambda: None, self.speaker.cancel,
                                bridge.barge_in.emit)
        conversation, voice = Settings().conversation, Settings().voice
        self.controller = Controller(
            _EngineAdapter(self.link), self.speaker, self.router, self.saved_history,
            TalkSettings(hands_free=True, sensitivity=conversation.vad_sensitivity, silence_ms=conversation.silence_ms,
                         voice=voice.name, speed=voice.speed))
        c = self.controller
        bridge.event.connect(c.engine_event)
        bridge.link_status.connect(self._on_link_status)
        bridge.engine_ready.connect(lambda url, token: self.link.connect(url, token))
        bridge.playback_started.connect(c.playback_started)
        bridge.playback_drained.connect(c.playback_drained)
        bridge.barge_in.connect(c.barge_in)
        bridge.message.connect(lambda text, error: error and self.app_messages.append(text))
        c.message.connect(lambda text, error: error and self.app_messages.append(text))
        c.assistant_finished.connect(self._on_assistant_finished)
        self._drain_timer = QTimer(interval=10, timeout=self.speaker.poll)

    # --- start and stop ----------------------------------------------------------------------------------

    def start(self) -> None:
        from app.bench.event_loop import run_until
        from app.state import AppState

        self._drain_timer.start()
        self.microphone.start()
        self.supervisor.start()
        run_until(lambda: self.controller.state is AppState.LISTENING or self.supervisor.gave_up,
                  ENGINE_READY_TIMEOUT_S, "the engine and hands-free listening")
        if self.supervisor.gave_up:
            raise RuntimeError(f"the engine did not start; see {self.supervisor.log_path}")

    def stop(self) -> None:
        self._drain_timer.stop()
        self.microphone.stop()
        self.link.close()
        self.supervisor.stop()
        self.saved_history.close()

    # --- the link's thread -------------------------------------------------------------------------------

    def _on_link_event(self, event: dict) -> None:
        kind = event.get("type")
        response_id = event.get("response_id") or (event.get("response") or {}).get("id")
        if kind in self._audio_done and response_id:  # as the app does: the speaker learns first
            self.speaker.finish(response_id)
        with self._lock:
            if kind == "response.created":
                self.created[response_id] = time.monotonic()
            elif kind == "response.done":
                self.done.add(response_id)
            elif kind == "error":
                self.engine_errors.append(event.get("error") or {})
            elif kind in ("conversation.item.created", "conversation.item.added"):
                self.items_in_engine.add((event.get("item") or {}).get("id"))
            elif kind == "conversation.item.deleted":
                self.items_in_engine.discard(event.get("item_id"))
        self.bridge.event.emit(event)

    def _on_link_audio(self, response_id: str, _item_id: str, pcm) -> None:
        if response_id not in self.first_delta:
            with self._lock:
                self.first_delta.setdefault(response_id, time.monotonic())
        self.speaker.push(response_id, pcm)

    # --- the GUI thread ------------------------------------------------------------------------------------

    def _on_link_status(self, state: str, reason: str) -> None:
        from app.engine_link import client as link_states

        if state == link_states.CONNECTED:
            self.controller.engine_connected()
        elif state == link_states.DISCONNECTED:
            self.controller.engine_disconnected(reason)

    def _on_assistant_finished(self, response_id: str, text: str, _interrupted: bool) -> None:
        self.answers[response_id] = text

    # --- the conversation ----------------------------------------------------------------------------------

    def converse(self, duration_s: float, spoken: dict, screens: list[bytes], progress) -> list[SoakTurn]:
        from app.bench.event_loop import run_until
        from app.state import AppState

        rng = self.random
        counters = {kind: 0 for kind in spoken}
        turns: list[SoakTurn] = []
        opening = list(WARM_UP)
        clock, next_report, cut_next = 0.0, 0.0, False
        while clock < duration_s:
            warm_up = bool(opening) or cut_next and turns[-1].warm_up
            if cut_next:
                kind, force_cut = "barge-in", False
            elif opening:
                kind, force_cut = opening.pop(0)
            else:
                kind, force_cut = ("screen" if rng.random() < SCREEN_SHARE else "question"), False
            index = counters[kind]
            counters[kind] += 1
            line = spoken[kind][index % len(spoken[kind])]
            if kind != "barge-in":
                clock += rng.uniform(*THINK_S)
            turn = SoakTurn(kind, line.text, line.voice, round(clock, 1), warm_up)
            if kind == "screen":
                self.controller.ask_about_screen(screens[index % len(screens)])
            # A screen question is said in real time: reading the screenshot starts as the person speaks.
            said = self.microphone.say(line.audio, over_reply=kind == "barge-in", real_time=kind == "screen")
            run_until(said.done.is_set, REPLY_TIMEOUT_S, "the line to be said")
            if kind == "barge-in":  # what was heard of the reply it cut is settled now
                turns[-1].heard_ms = round(self.speaker.heard_ms(turns[-1].response_id), 1)
                clock += turns[-1].heard_ms / 1000
            clock += line.audio.size / 24_000
            cut_next = self._hear_reply(turn, said.end_of_speech, force_cut or rng.random() < CUT_SHARE, rng)
            if turn.eos_to_first_delta_ms is not None:
                clock += turn.eos_to_first_delta_ms / 1000
            if not turn.cut:  # a cut reply is heard until the next line cuts it (counted there)
                clock += turn.heard_ms / 1000
                if rng.random() < IDLE_SHARE:
                    clock += rng.uniform(*IDLE_S)  # the person went back to work
            if warm_up:
                clock = 0.0  # the simulated hour starts after the warm-up
            turns.append(turn)
            self._sample(clock)
            if clock >= next_report:
                progress(f"{clock / 60:5.1f} simulated min, {len(turns)} turns, engine RSS "
                         f"{self.samples[-1]['engine_rss_mb']} MB, app RSS {self.samples[-1]['app_rss_mb']} MB")
                next_report = clock + 300
        run_until(lambda: self.controller.state is AppState.LISTENING, REPLY_TIMEOUT_S, "listening at the end")
        for turn in turns:  # a cut reply's text is what was heard of it, known once the engine truncated it
            if turn.cut:
                turn.answer = self.answers.get(turn.response_id, "")
        return turns

    def _hear_reply(self, turn: SoakTurn, end_of_speech: float, cut: bool, rng: random.Random) -> bool:
        """Wait for the reply to the line just said and hear it, to its end or (`cut`) to a random point
        where the next line will interrupt it. True if it is left playing, to be cut."""
        from app.bench.event_loop import run_until
        from app.state import AppState

        response_id = self._wait_for_reply(end_of_speech)
        if response_id is None:
            return False
        turn.response_id = response_id
        turn.eos_to_first_delta_ms = round((self.first_delta[response_id] - end_of_speech) * 1000, 1)
        if cut:
            cut_at_ms = rng.uniform(*CUT_AFTER_S) * 1000
            run_until(lambda: self.speaker.heard_ms(response_id) >= cut_at_ms or self.speaker.playing != response_id,
                      REPLY_TIMEOUT_S, "the reply to play on")
            cut = turn.cut = self.speaker.playing == response_id  # else it ended first: no one cuts it
        if not cut:
            run_until(lambda: response_id in self.done and self.controller.state is AppState.LISTENING,
                      REPLY_TIMEOUT_S, "the reply to end")
            run_until(lambda: response_id in self.answers, 5)  # its transcript, unless it said nothing
        turn.heard_ms = round(self.speaker.heard_ms(response_id), 1)
        turn.reply_ms = round(self.speaker.audio_ms(response_id), 1)
        turn.answer = self.answers.get(response_id, "")
        return cut

    def _wait_for_reply(self, end_of_speech: float) -> str | None:
        """The response the engine started for the line that ended at `end_of_speech`, once its first
        audio has arrived; None if it said nothing (empty transcript) or nothing came."""
        from app.bench.event_loop import run_until

        def reply() -> str | None:
            with self._lock:
                mine = [rid for rid, at in self.created.items() if at >= end_of_speech]
            return mine[0] if mine else None

        run_until(lambda: reply() is not None, REPLY_TIMEOUT_S)
        response_id = reply()
        if response_id is None:
            return None
        run_until(lambda: response_id in self.first_delta or response_id in self.done, REPLY_TIMEOUT_S)
        return response_id if response_id in self.first_delta else None

    def _sample(self, clock: float) -> None:
        self.samples.append({"sim_s": round(clock, 1), "app_rss_mb": memory_mb(),
                             "engine_rss_mb": memory_mb(pid=self.supervisor.pid or 0),
                             "app_threads": threading.active_count()})


def screenshot_png(fact: str, variant: int) -> bytes:
    """A full-HD screen of text (a mail client, a calendar, a chat) with `fact` among its lines."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(variant)
    width, height = SCREEN_SIZE
    image = Image.new("RGB", SCREEN_SIZE, (246, 246, 248))
    draw = ImageDraw.Draw(image)
    try:
        font, small = ImageFont.truetype("DejaVuSans.ttf", 24), ImageFont.truetype("DejaVuSans.ttf", 18)
    except OSError:
        font, small = ImageFont.load_default(24), ImageFont.load_default(18)
    draw.rectangle((0, 0, width, 48), fill=(45, 52, 70))
    draw.text((20, 12), ("Mail", "Calendar", "Messages")[variant % 3] + " - Confide soak", fill="white", font=font)
    draw.rectangle((0, 48, 360, height), fill=(228, 230, 236))
    for row in range(24):
        draw.text((20, 70 + row * 40), f"Folder {row + 1}: {rng.choice(_WORDS)} {rng.choice(_WORDS)}",
                  fill=(60, 60, 60), font=small)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 10))).capitalize() + "."
             for _ in range(18)]
    lines.insert(rng.randrange(len(lines)), fact)
    for row, line in enumerate(lines):
        draw.text((400, 80 + row * 50), line, fill=(20, 20, 20), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


_WORDS = ("meeting", "report", "budget", "garden", "train", "invoice", "holiday", "project", "review", "lunch",
          "weekly", "update", "draft", "photos", "family", "dinner", "tickets", "plan", "notes", "team", "order",
          "delivery", "reminder", "doctor", "school", "friday", "morning", "contract", "summary", "concert")


def _engine_prompts(log_path: Path) -> dict[str, int]:
    """Tokens of context each response's prompt held (prefilled + reused), from the engine's log."""
    prompts = {}
    for path in sorted(log_path.parent.glob(log_path.name + "*"), reverse=True):  # rotated files first
        for match in _RESPONSE_LOG.finditer(path.read_text(errors="replace")):
            prompts[match.group(1)] = int(match.group(3)) + int(match.group(4))
    return prompts


def _ratio(late: float | None, early: float | None) -> float | None:
    return round(late / early, 2) if late and early else None


def _figures(soak: _Soak, turns: list[SoakTurn], minutes: float) -> dict:
    timed = [t for t in turns if not t.warm_up]
    end = max(t.sim_start_s for t in timed)
    windows = {"first": [t for t in timed if t.sim_start_s < WINDOW_S],
               "last": [t for t in timed if t.sim_start_s >= end - WINDOW_S]}
    # Spoken questions and interjections; screen questions apart (their wait is mostly reading the
    # screenshot and prefilling its text, and a few of them in a window would make its p95).
    talk = {name: [t.eos_to_first_delta_ms for t in window if t.kind != "screen"] for name, window in windows.items()}
    screen = {name: [t.eos_to_first_delta_ms for t in window if t.kind == "screen"] for name, window in windows.items()}
    samples = [s for s in soak.samples if s["sim_s"] > 0]
    warm = next((s for s in samples if s["sim_s"] >= WINDOW_S), samples[0])
    half = next((s for s in samples if s["sim_s"] >= end / 2), warm)
    final = samples[-1]
    prompts = _engine_prompts(soak.supervisor.log_path)
    prompt_tokens = {name: [prompts[t.response_id] for t in window if t.response_id in prompts]
                     for name, window in windows.items()}
    errors = [e for e in soak.engine_errors if e.get("code") != "response_cancel_not_active"]
    figures = {
        "simulated_minutes": round(final["sim_s"] / 60, 1),  # the clock when the last reply was heard
        "last_turn_at_simulated_min": round(end / 60, 1),
        "turns": len(timed),
        "questions": sum(t.kind == "question" for t in timed),
        "screen_questions": sum(t.kind == "screen" for t in timed),
        "interruptions": sum(t.cut for t in timed),
        "warm_up_turns": len(turns) - len(timed),
        "unanswered": sum(t.response_id is None for t in turns),
        "errors": len(errors) + len(soak.app_messages),
        "engine_errors": errors,
        "app_error_messages": soak.app_messages,
        "cancel_races": len(soak.engine_errors) - len(errors),  # cancelled just as it finished: not an error
        "state_at_end": soak.controller.state.value,
    }
    for name in ("first", "last"):
        figures[f"eos_to_first_delta_ms_p50_{name}_10min"] = p50(talk[name])
        figures[f"eos_to_first_delta_ms_p95_{name}_10min"] = p95(talk[name])
    figures.update({
        "p50_ratio_last_to_first": _ratio(p50(talk["last"]), p50(talk["first"])),
        "p95_ratio_last_to_first": _ratio(p95(talk["last"]), p95(talk["first"])),
        "spoken_turns_first_10min": len(talk["first"]),
        "spoken_turns_last_10min": len(talk["last"]),
        "eos_to_first_delta_ms_p50": p50([t.eos_to_first_delta_ms for t in timed if t.kind != "screen"]),
        "eos_to_first_delta_ms_p95": p95([t.eos_to_first_delta_ms for t in timed if t.kind != "screen"]),
        # One stalled turn in a hundred moves no percentile; the longest wait (screen questions too) shows it.
        "eos_to_first_delta_ms_max": max((t.eos_to_first_delta_ms for t in timed
                                          if t.eos_to_first_delta_ms is not None), default=None),
        "screen_eos_to_first_delta_ms_p50": p50([t.eos_to_first_delta_ms for t in timed if t.kind == "screen"]),
        "screen_eos_to_first_delta_ms_p50_first_10min": p50(screen["first"]),
        "screen_eos_to_first_delta_ms_p50_last_10min": p50(screen["last"]),
        "screen_answers_mentioning_text": _screen_answers(turns),
        "rss_baseline_at_simulated_min": round(warm["sim_s"] / 60, 1),
        "engine_rss_mb_after_warm_up": warm["engine_rss_mb"],
        "engine_rss_mb_at_end": final["engine_rss_mb"],
        "engine_rss_growth_percent": _growth(warm["engine_rss_mb"], final["engine_rss_mb"]),
        "engine_peak_rss_mb": memory_mb("VmHWM", soak.supervisor.pid or 0),
        "app_rss_mb_after_warm_up": warm["app_rss_mb"],
        "app_rss_mb_at_end": final["app_rss_mb"],
        "app_rss_growth_percent": _growth(warm["app_rss_mb"], final["app_rss_mb"]),
        # A leak grows with the turns, in the second half-hour as in the first; what fills once (the
        # model's window, buffers sized by the longest prompt so far) has mostly filled by then.
        "rss_second_half_from_simulated_min": round(half["sim_s"] / 60, 1),
        "engine_rss_growth_percent_second_half": _growth(half["engine_rss_mb"], final["engine_rss_mb"]),
        "app_rss_growth_percent_second_half": _growth(half["app_rss_mb"], final["app_rss_mb"]),
        "app_threads_after_warm_up": warm["app_threads"],
        "app_threads_at_end": final["app_threads"],
        "app_replies_tracked_at_end": len(soak.controller._facts.replies),
        "engine_conversation_items": len(soak.items_in_engine),
        "history_turns_saved": len(json.loads((soak.work_dir / "history.json").read_text())["turns"]),
        "llm_prompt_tokens_p50_first_10min": p50(prompt_tokens["first"]),
        "llm_prompt_tokens_p50_last_10min": p50(prompt_tokens["last"]),
        "llm_prompt_tokens_max": max(prompts.values(), default=None),
        "conditions": {"speech_speedup": SPEECH_SPEEDUP, "playback_speedup": PLAYBACK_SPEEDUP,
                       "screen_questions_said_in_real_time": True, "asked_minutes": minutes,
                       "screen_size": list(SCREEN_SIZE), "cpu_cores": os.cpu_count(),
                       "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "rss_samples": soak.samples,
        "turn_log": [asdict(t) for t in turns],
    })
    return figures


def _screen_answers(turns: list[SoakTurn]) -> str:
    from app.bench.screen_trials import FACTS

    asked = [t for t in turns if t.kind == "screen" and not t.cut]
    facts = {fact.question: fact for fact in FACTS}
    right = sum(any(word in t.answer.lower() for word in facts[t.text].answer_words) for t in asked)
    return f"{right} of {len(asked)}"


def _growth(before: float | None, after: float | None) -> float | None:
    return round(100 * (after - before) / before, 2) if before and after else None
