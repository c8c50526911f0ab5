"""What the assistant is doing, as the person sees it: one value the tray, window and controller share."""

from __future__ import annotations

import enum


class AppState(enum.Enum):
    CONNECTING = "connecting"  # the engine is starting or unreachable; retrying
    IDLE = "idle"  # ready; not listening (hands-free off) and not speaking
    LISTENING = "listening"  # the microphone is streaming to the engine
    THINKING = "thinking"  # the turn is over; waiting for the reply's first sound
    SPEAKING = "speaking"  # the reply is playing
    MUTED = "muted"  # the microphone is off by the person's choice
    ERROR = "error"  # something needs the person's attention (see the message)

    @property
    def label(self) -> str:
        return {
            AppState.CONNECTING: "Starting…",
            AppState.IDLE: "Ready",
            AppState.LISTENING: "Listening",
            AppState.THINKING: "Thinking",
            AppState.SPEAKING: "Speaking",
            AppState.MUTED: "Muted",
            AppState.ERROR: "Needs attention",
        }[self]
