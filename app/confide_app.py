"""Confide's parts, wired together: engine link, devices, controller, tray, window and hotkeys.

Threads: the GUI thread owns the widgets and the controller; the link, the supervisor, the microphone
worker and the speaker call back on their own threads, and `_Bridge` carries those calls across as
queued signals. Reply audio never crosses to the GUI: the link hands it straight to the speaker.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QApplication

from app.audio.barge_in_detector import BargeInDetector
from app.audio.capture import Microphone
from app.audio.devices import DeviceWatcher
from app.audio.echo_canceller import EchoCanceller
from app.audio.echo_reference import PlayedAudio
from app.audio.playback import Speaker
from app.audio.self_interruptions import CONFIRM_S, SelfInterruptions
from app.audio.voice_activity import VoiceActivity
from app.controller import Controller, TalkSettings
from app.engine_link import client as link_states
from app.engine_link.client import RealtimeLink
from app.engine_link.supervisor import EngineSupervisor
from app.history import ConversationHistory, HistoryWriteError
from app.hotkeys import GlobalHotkeys
from app.mic_router import MicRouter
from app.screen import ScreenCaptureError, capture_screen_at
from app.session_setup import vad_threshold
from app.settings import Settings, save_settings
from app.standby import AudioStandby
from app.ui.settings_dialog import SettingsDialog
from app.ui.tray import TrayIcon
from app.ui.window import MainWindow

log = logging.getLogger(__name__)

DEVICE_RETRY_MS = 2000
ECHO_MODES = {
    "cancelled": ("echo cancelled", "The assistant's own voice is removed from the microphone, so open "
                                    "speakers work and you can talk over it."),
    "half-duplex": ("half-duplex", "The speakers' echo was getting through, so Confide listens less eagerly "
                                   "while it speaks: talk a little longer, or use the talk key, to interrupt. "
                                   "Headphones avoid this."),
    "off": ("", "Echo cancellation is off: use headphones, or the assistant may hear itself."),
}
_AUDIO_DONE = ("response.output_audio.done", "response.audio.done", "response.done")


class _Bridge(QObject):
    """Signals emitted from worker threads and delivered on the GUI thread (Qt queues them)."""

    event = Signal(object)
    link_status = Signal(str, str)
    engine_ready = Signal(str, str)
    engine_status = Signal(str)
    engine_crashed = Signal(int, str)
    playback_started = Signal(str)
    playback_drained = Signal(str)
    barge_in = Signal(str, float)
    mic_error = Signal(str)
    speaker_error = Signal(str)
    level = Signal(float)
    message = Signal(str, bool)
    devices_changed = Signal(object)
    echo_failing = Signal()


class _EngineAdapter:
    """The controller's engine port on top of the link."""

    def __init__(self, link: RealtimeLink):
        self._link = link

    def send(self, event: dict) -> bool:
        return self._link.send(event)

    def update_session(self, event: dict) -> None:
        self._link.update_session(event)


class _SavedHistory:
    """The controller's history port: every change is saved off the GUI thread, in order."""

    def __init__(self, history: ConversationHistory, on_error):
        self._history = history
        self._on_error = on_error
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._closed = False

    def record(self, role, text, item_id, interrupted=False, had_screenshot=False, after=None) -> None:
        self._history.record(role, text, item_id, interrupted=interrupted, had_screenshot=had_screenshot, after=after)
        self._save_soon()

    def as_conversation_items(self) -> list[dict]:
        return self._history.as_conversation_items()

    def clear(self) -> None:
        self._history.clear()
        self._save_soon()

    def _save_soon(self) -> None:
        if self._closed:  # an engine event still queued when the app shut down: saved here, still in order
            self._save()
        else:
            self._saver.submit(self._save)

    def _save(self) -> None:
        try:
            self._history.save()
        except HistoryWriteError as error:
            self._on_error(f"The conversation could not be saved: {error}.", True)

    def close(self) -> None:
        self._closed = True
        self._saver.shutdown(wait=True)


class ConfideApp(QObject):
    def __init__(self, settings: Settings, history: ConversationHistory, engine_args: list[str] | None = None):
        super().__init__()
        self.settings = settings
        self.history = history
        self.bridge = _Bridge()
        self._engine_args = engine_args or []
        self._supervisor: EngineSupervisor | None = None

        self.link = RealtimeLink(on_event=self._on_link_event, on_status=self.bridge.link_status.emit,
                                 on_audio=self._on_link_audio)
        self.played_audio = PlayedAudio()
        self.speaker = Speaker(settings.audio.output_device, on_error=self.bridge.speaker_error.emit,
                               on_started=self.bridge.playback_started.emit,
                               on_drained=self.bridge.playback_drained.emit, on_played=self.played_audio.played)
        self.voice_activity = VoiceActivity()
        self.router = MicRouter(self.link.send_audio, lambda chunk: self.barge_in_detector.feed(chunk),
                                lambda: self.barge_in_detector.reset(), self.speaker.cancel, self._barge_in,
                                self.bridge.level.emit)
        self.echo_canceller = EchoCanceller(self.played_audio, self.router.on_audio,
                                            enabled=settings.audio.echo_cancellation,
                                            noise_suppression=settings.audio.noise_suppression,
                                            on_failing=self.bridge.echo_failing.emit)
        self.barge_in_detector = BargeInDetector(self.voice_activity, self.echo_canceller,
                                                 vad_threshold(settings.conversation.vad_sensitivity))
        self.self_interruptions = SelfInterruptions(on_failing=self._on_echo_failing)
        # Precise: a coarse timer may fire 5% early, before the engine had its CONFIRM_S to hear anyone.
        self._barge_in_judge = QTimer(self, singleShot=True, timerType=Qt.TimerType.PreciseTimer,
                                      timeout=self._judge_barge_in)
        self.microphone = Microphone(settings.audio.input_device, on_audio=self.echo_canceller.process,
                                     on_error=self.bridge.mic_error.emit)
        self.device_watcher = DeviceWatcher(self.bridge.devices_changed.emit)
        # Not every loss shows in the device list (a sound server can drop a device PortAudio still
        # names): a lost microphone or speaker is also retried every few seconds.
        self._device_retry = QTimer(self, interval=DEVICE_RETRY_MS, timeout=self._reopen_lost_devices)
        self._device_problem = {"microphone": "", "speaker": ""}
        self._saved_history = _SavedHistory(history, self.bridge.message.emit)
        conversation = settings.conversation
        self.controller = Controller(
            _EngineAdapter(self.link), self.speaker, self.router, self._saved_history,
            TalkSettings(hands_free=conversation.hands_free, sensitivity=conversation.vad_sensitivity,
                         silence_ms=conversation.silence_ms, voice=settings.voice.name, speed=settings.voice.speed,
                         instructions=conversation.instructions))
        self.standby = AudioStandby(self.microphone, self.speaker, self._device_failed, self)
        self.window = MainWindow()
        self.tray = TrayIcon(self.window)
        self.hotkeys = GlobalHotkeys()
        self._connect()

    def _barge_in(self, response_id: str, onset: float) -> None:
        """On the capture worker, once the speaker is silent."""
        log.info("barge-in over %s, heard on the %s signal", response_id, self.barge_in_detector.heard_by)
        self.bridge.barge_in.emit(response_id, onset)

    # --- start and stop --------------------------------------------------------------------------------

    def start(self, warnings: list[str] = ()) -> None:
        self.window.load_history([(t.role, t.text, t.interrupted) for t in self.history.turns])
        self.window.set_hands_free(self.controller.hands_free)
        self._show_echo_mode()
        for warning in warnings:
            self.window.show_message(warning, error=True)
        if self.tray.available:
            self.tray.show()
        else:
            self.window.present()
            self.window.show_message("No system tray was found: Confide stays in this window.", error=False)
        self._start_hotkeys()
        self.speaker.start()
        if not self.microphone.start():
            self._device_failed("microphone", self.microphone.last_error or "No microphone was found.")
        self.device_watcher.start()
        self._device_retry.start()
        self._start_engine()

    def shutdown(self) -> None:
        self._device_retry.stop()
        self._barge_in_judge.stop()
        self.standby.stop()
        self.device_watcher.stop()
        self.hotkeys.stop()
        self.microphone.stop()
        self.speaker.stop()
        self.link.close()
        if self._supervisor:
            self._supervisor.stop()
        self._saved_history.close()
        self.tray.dispose()

    def _start_engine(self) -> None:
        engine = self.settings.engine
        if engine.url:
            self.link.connect(engine.url, engine.token)
            return
        args = list(self._engine_args) + (["--llm", engine.llm] if engine.llm else [])
        self._supervisor = EngineSupervisor(args, on_ready=self.bridge.engine_ready.emit,
                                            on_crash=self.bridge.engine_crashed.emit,
                                            on_status=self.bridge.engine_status.emit)
        self._supervisor.start()

    def _start_hotkeys(self) -> None:
        available, reason = self.hotkeys.support()
        if not available:
            self.window.show_message(reason, error=False)
            return
        keys = self.settings.hotkeys
        self.hotkeys.start({"toggle_window": keys.toggle_window, "push_to_talk": keys.push_to_talk,
                            "ask_screen": keys.ask_screen, "stop_speaking": keys.stop_speaking})

    # --- wiring ------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        b, c, w, t = self.bridge, self.controller, self.window, self.tray
        b.event.connect(c.engine_event)
        b.link_status.connect(self._on_link_status)
        b.engine_ready.connect(lambda url, token: self.link.connect(url, token))
        b.engine_status.connect(self._on_engine_status)
        b.engine_crashed.connect(lambda code, tail: log.warning("engine exited (%s): %s", code, tail))
        b.playback_started.connect(c.playback_started)
        b.playback_drained.connect(c.playback_drained)
        b.barge_in.connect(c.barge_in)
        b.barge_in.connect(self._count_barge_in)
        b.mic_error.connect(lambda message: self._device_failed("microphone", message))
        b.speaker_error.connect(lambda message: self._device_failed("speaker", message))
        b.level.connect(w.set_mic_level)
        b.message.connect(self._show_message)
        b.devices_changed.connect(lambda _devices: self._reopen_lost_devices())
        b.echo_failing.connect(self._on_echo_failing)

        c.state_changed.connect(self.standby.state_changed)
        c.state_changed.connect(w.set_state)
        c.state_changed.connect(t.set_state)
        c.user_partial.connect(w.show_user_partial)
        c.user_final.connect(w.show_user_final)
        c.assistant_delta.connect(w.show_assistant_delta)
        c.assistant_finished.connect(w.finish_assistant)
        c.screenshot_attached.connect(w.show_screenshot)
        c.conversation_cleared.connect(w.clear_conversation)
        c.message.connect(self._show_message)
        c.hands_free_changed.connect(self._on_hands_free_changed)
        c.speech_heard.connect(self.self_interruptions.speech_heard)
        c.spoken_turn_heard.connect(self._on_spoken_turn)
        c.muted_changed.connect(w.set_muted)
        c.muted_changed.connect(t.set_muted)

        for source in (w, t):
            source.hands_free_toggled.connect(c.set_hands_free)
            source.mute_toggled.connect(c.set_muted)
            source.ask_screen_requested.connect(self.ask_about_screen)
            source.settings_requested.connect(self.open_settings)
            source.new_conversation_requested.connect(c.new_conversation)
        w.text_submitted.connect(c.submit_text)
        w.talk_pressed.connect(c.talk_pressed)
        w.talk_released.connect(c.talk_released)
        t.open_window_requested.connect(w.present)
        t.talk_requested.connect(c.listen_once)
        t.quit_requested.connect(QApplication.quit)

        self.hotkeys.triggered.connect(self._on_hotkey)
        self.hotkeys.push_to_talk_pressed.connect(c.talk_pressed)
        self.hotkeys.push_to_talk_released.connect(c.talk_released)

    def _on_link_event(self, event: dict) -> None:
        """On the link thread: the speaker learns a reply's audio is complete before the GUI hears of it."""
        if event.get("type") in _AUDIO_DONE:
            response_id = event.get("response_id") or (event.get("response") or {}).get("id")
            if response_id:
                self.speaker.finish(response_id)
        self.bridge.event.emit(event)

    def _on_link_audio(self, response_id: str, item_id: str, pcm) -> None:
        self.speaker.push(response_id, pcm)  # refused if the controller already cut that reply

    def _on_link_status(self, state: str, reason: str) -> None:
        if state == link_states.CONNECTED:
            self.controller.engine_connected()
        elif state == link_states.DISCONNECTED:
            self.controller.engine_disconnected(reason)

    def _reopen_lost_devices(self) -> None:
        """A microphone or speaker that was lost gets back to work by itself once it is there again."""
        if self.standby.resting:
            return  # closed on purpose; they reopen when needed
        for kind, device in (("microphone", self.microphone), ("speaker", self.speaker)):
            if not device.running and device.start():
                self._device_problem[kind] = ""
                self._new_echo_path()
                self._show_message(f"{kind.capitalize()} ready: {device.device_name}.", False)

    # --- echo ----------------------------------------------------------------------------------------------

    def _on_echo_failing(self) -> None:
        if self.barge_in_detector.half_duplex:
            return
        self.barge_in_detector.half_duplex = True
        self.echo_canceller.reset()
        log.warning("echo cancellation is not removing the echo: half-duplex from now on")
        self._show_message("The speakers' echo is getting through, so Confide now listens less eagerly while it "
                           "speaks: talk a little longer (or use the talk key) to interrupt. Headphones avoid this.",
                           True)
        self._show_echo_mode()

    def _count_barge_in(self, _response_id: str, _onset: float) -> None:
        if not self.controller.hands_free:
            return  # without the engine's turn detection, nothing would say the person spoke
        self.self_interruptions.barge_in()
        if not self._barge_in_judge.isActive():
            self._judge_barge_in_after(CONFIRM_S)

    def _judge_barge_in_after(self, seconds: float) -> None:
        self._barge_in_judge.start(math.ceil(seconds * 1000) + 20)

    def _judge_barge_in(self) -> None:
        left = self.self_interruptions.expire()
        if left is not None:
            self._judge_barge_in_after(left)

    def _on_spoken_turn(self, item_id: str, own_voice: bool) -> None:
        if own_voice:
            self.window.drop_user_turn(item_id)
            self.self_interruptions.own_voice_heard()
        else:
            self.self_interruptions.person_heard()

    def _new_echo_path(self) -> None:
        """Another microphone or speaker: learn the echo afresh, and trust the canceller again."""
        self.echo_canceller.reset()
        self.self_interruptions.forget()
        self.barge_in_detector.half_duplex = False
        self._show_echo_mode()

    def _show_echo_mode(self) -> None:
        if self.barge_in_detector.half_duplex:  # what the person must know first: interrupting takes longer
            mode = "half-duplex"
        else:
            mode = "cancelled" if self.echo_canceller.enabled else "off"
        label, explanation = ECHO_MODES[mode]
        self.window.set_echo_mode(label, explanation)
        self.tray.set_echo_mode(label, explanation)

    def _device_failed(self, kind: str, message: str) -> None:
        if message == self._device_problem[kind]:
            return  # the same problem again (a retry that failed): said once is enough
        self._device_problem[kind] = message
        if kind == "microphone":
            self.controller.microphone_failed(message)
        else:
            self.controller.speaker_failed(message)

    def _on_engine_status(self, text: str) -> None:
        log.info("engine: %s", text)
        if self._supervisor is not None and self._supervisor.gave_up:
            self.controller.engine_failed(text)

    def _on_hands_free_changed(self, on: bool) -> None:
        self.window.set_hands_free(on)
        self.tray.set_hands_free(on)
        self.settings.conversation.hands_free = on
        self._save_settings()
        if not on:
            self.self_interruptions.forget()  # a row half counted in hands-free ends with it

    def _on_hotkey(self, name: str) -> None:
        if name == "toggle_window":
            self.window.toggle_visibility()
        elif name == "ask_screen":
            self.ask_about_screen()
        elif name == "stop_speaking":
            self.controller.stop_speaking()

    def handle_command(self, command: str) -> None:
        """A command from `confide --toggle` and friends (another process, through the local socket)."""
        actions = {"toggle": self.window.toggle_visibility, "show": self.window.present,
                   "ask-screen": self.ask_about_screen, "stop": self.controller.stop_speaking,
                   "quit": QApplication.quit}
        action = actions.get(command)
        if action is not None:
            action()

    def _show_message(self, text: str, error: bool) -> None:
        self.window.show_message(text, error=error)
        if error and not self.window.isVisible() and self.tray.available:
            self.tray.notify("Confide", text, error=True)

    # --- actions ----------------------------------------------------------------------------------------

    def ask_about_screen(self) -> None:
        cursor = QCursor.pos()
        try:
            shot = capture_screen_at(cursor.x(), cursor.y())
        except ScreenCaptureError as error:
            self._show_message(str(error), True)
            return
        self.controller.ask_about_screen(shot.png)

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, [d.name for d in _devices("input")], [d.name for d in _devices("output")])
        if not dialog.exec():
            return
        updated: Settings = dialog.result_settings()
        previous, self.settings = self.settings, updated
        if updated.audio.input_device != previous.audio.input_device:
            self.microphone.switch_device(updated.audio.input_device)
        if updated.audio.output_device != previous.audio.output_device:
            self.speaker.switch_device(updated.audio.output_device)
        if (updated.audio.input_device, updated.audio.output_device) != (previous.audio.input_device,
                                                                         previous.audio.output_device):
            self._new_echo_path()
        self.echo_canceller.configure(updated.audio.echo_cancellation, updated.audio.noise_suppression)
        self._show_echo_mode()
        if updated.hotkeys != previous.hotkeys:
            self.hotkeys.stop()
            self._start_hotkeys()
        talk = self.controller.settings
        talk.sensitivity, talk.speed = updated.conversation.vad_sensitivity, updated.voice.speed
        talk.instructions = updated.conversation.instructions
        self.barge_in_detector.threshold = vad_threshold(updated.conversation.vad_sensitivity)
        self.controller.set_hands_free(updated.conversation.hands_free)
        self.controller.apply_settings()
        if (updated.engine.url, updated.engine.token) != (previous.engine.url, previous.engine.token) and updated.engine.url:
            self.link.connect(updated.engine.url, updated.engine.token)
        self._save_settings()

    def _save_settings(self) -> None:
        try:
            save_settings(self.settings)
        except OSError as error:
            self._show_message(f"Settings could not be saved ({error.strerror}); they apply until you quit.", True)


def _devices(direction: str):
    from app.audio.devices import AudioDeviceError, input_devices, output_devices

    try:
        return input_devices() if direction == "input" else output_devices()
    except AudioDeviceError:
        return []
