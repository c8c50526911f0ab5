"""The whole Confide app (ConfideApp: controller, link, supervisor, speaker, microphone, saved history) on the
test display and PulseAudio harness, with its supervisor running the tone engine (tests/harness/tone_engine.py)
instead of the models: fault tests drive hundreds of replies in seconds through the app's real code paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.confide_app import ConfideApp
from app.engine_link.supervisor import EngineSupervisor
from app.history import ConversationHistory
from app.settings import Settings
from app.state import AppState
from tests.harness.tone_engine import tone_engine_command

READY_TIMEOUT_S = 60


class ToneEngineSupervisor(EngineSupervisor):
    """The app's supervisor, running the tone engine."""

    @property
    def command(self) -> list[str]:
        return tone_engine_command(self.token_file, self.extra_args)


def pump(qtbot, condition: Callable[[], object], timeout: float, what: str) -> float:
    """Run the Qt event loop until `condition()`; the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        qtbot.wait(5)
    return time.monotonic() - started


class Seen:
    """What the app said to the person and what the engine sent, as the GUI thread saw it."""

    def __init__(self, app: ConfideApp):
        self.messages: list[tuple[float, str, bool]] = []
        self.created: list[tuple[float, str]] = []  # response.created, in order: (time, response id)
        self.items: list[tuple[float, str]] = []  # conversation.item.created: (time, item id)
        show = app.window.show_message  # every message for the person goes there (and errors to the tray too)

        def shown(text: str, error: bool = False) -> None:
            self.messages.append((time.monotonic(), text, error))
            show(text, error)

        app.window.show_message = shown
        app.bridge.event.connect(self._event)

    def _event(self, event: dict) -> None:
        if event.get("type") == "response.created":
            self.created.append((time.monotonic(), event["response"]["id"]))
        elif event.get("type") == "conversation.item.created":
            self.items.append((time.monotonic(), event["item"]["id"]))

    def said(self, *words: str, since: float = 0.0) -> list[str]:
        return [text for at, text, _ in self.messages if at >= since and all(w in text.lower() for w in words)]


@contextlib.contextmanager
def tone_app(qtbot, tmp_path: Path, monkeypatch, engine_args: list[str] = (), history_path: Path | None = None,
             configure: Callable[[Settings], None] | None = None, **supervisor_options) -> Iterator[ConfideApp]:
    """A started ConfideApp, hands-free, whose engine is the tone engine, ready and listening; shut down
    afterwards. `configure` changes the settings first; `supervisor_options` go to the EngineSupervisor."""
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setattr(EngineSupervisor, "command", ToneEngineSupervisor.command)
    if supervisor_options:
        real_init = EngineSupervisor.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **{**kwargs, **supervisor_options})

        monkeypatch.setattr(EngineSupervisor, "__init__", init)
    settings = Settings()
    settings.conversation.hands_free = True  # its resting state is listening: what "back to listening" means
    if configure is not None:
        configure(settings)
    app = ConfideApp(settings, ConversationHistory(history_path), engine_args=list(engine_args))
    try:
        app.start()
        pump(qtbot, lambda: app.controller.state is AppState.LISTENING, READY_TIMEOUT_S, "the app to be ready")
        yield app
    finally:
        app.shutdown()


def answer(qtbot, app: ConfideApp, question: str) -> None:
    """Type `question` and wait until the reply is over (heard, or shown as text) and recorded."""
    app.controller.submit_text(question)

    def recorded() -> bool:
        turns = app.history.turns
        return bool(turns) and turns[-1].text.startswith(f"Answer to {question}.")

    pump(qtbot, lambda: app.controller.state is not AppState.LISTENING or recorded(), 10, f"the reply to {question!r}")
    pump(qtbot, lambda: app.controller.state is AppState.LISTENING and recorded(), 10, f"the end of {question!r}")


def link_task_count(app: ConfideApp) -> int:
    """asyncio tasks alive on the link's loop, counted on that loop."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), app.link._loop).result(5)


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())
