"""The Realtime `session.update` the app asks for, from the person's settings and the talking mode."""

from __future__ import annotations

from typing import Any

def vad_threshold(sensitivity: float) -> float:
    """Sensitivity 0..1 (higher hears quieter speech) to a speech-probability threshold."""
    return round(min(0.9, max(0.1, 0.9 - 0.8 * sensitivity)), 2)  # 0.5 -> 0.5, the engine's default


def session_update(*, hands_free: bool, sensitivity: float, silence_ms: int, voice: str, speed: float,
                   instructions: str = "") -> dict[str, Any]:
    """Hands-free: the engine's server VAD ends turns and answers by itself. Push-to-talk: the app
    commits each turn when the key is released, so no silence window is waited for. The persona is the
    engine's own (its default instructions), so it is written in one place; the person's own
    `instructions` replace it when given."""
    turn_detection = {
        "type": "server_vad",
        "threshold": vad_threshold(sensitivity),
        "prefix_padding_ms": 300,
        "silence_duration_ms": silence_ms,
        "create_response": True,
        "interrupt_response": True,
    } if hands_free else None
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            **({"instructions": instructions} if instructions.strip() else {}),
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": turn_detection},
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice, "speed": speed},
            },
        },
    }
