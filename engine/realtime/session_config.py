"""The session's settings, and `session.update` in both shapes clients send.

GA shape (the current `openai` SDK): {"type": "realtime", "instructions", "output_modalities",
"audio": {"input": {"format", "transcription", "turn_detection"}, "output": {"format", "voice", "speed"}},
"max_output_tokens"}. Beta shape (older clients): flat `input_audio_format: "pcm16"`, `turn_detection`,
`input_audio_transcription`, `voice`, `modalities`, `max_response_output_tokens`, `temperature`.
Only the fields present are changed; `null` clears turn detection or transcription.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.audio.pcm import PROTOCOL_RATE
from engine.realtime import errors
from engine.realtime.client_events import MAX_NAME_CHARS, MAX_TEXT_CHARS, string_field
from engine.realtime.errors import ProtocolError
from engine.turns.detector import ServerVadSettings

_VAD_DEFAULTS = ServerVadSettings()

DEFAULT_INSTRUCTIONS = (
    "You are Confide, a warm and helpful voice assistant running privately on the user's own computer. "
    "You are speaking out loud: answer in one to three short, natural sentences, in plain words, with no "
    "lists, no markdown and no emojis. If text read from the user's screen is provided, answer from it."
)


@dataclass
class TurnDetection:
    """server_vad settings; the silence window is short because every millisecond of it is latency
    (engine/turns/detector.py says how the default was measured)."""

    threshold: float = _VAD_DEFAULTS.threshold
    prefix_padding_ms: int = _VAD_DEFAULTS.prefix_padding_ms
    silence_duration_ms: int = _VAD_DEFAULTS.silence_duration_ms
    create_response: bool = True
    interrupt_response: bool = True
    kind: str = "server_vad"  # or "semantic_vad", served by the same detector with an eagerness-based window

    def to_protocol(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }


@dataclass
class SessionConfig:
    instructions: str = DEFAULT_INSTRUCTIONS
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    voice: str = "joe"
    speed: float = 1.0
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcribe_input: bool = True
    max_output_tokens: int | None = None  # None = "inf" (the engine still caps one reply, see backends)
    temperature: float | None = None

    @property
    def speaks(self) -> bool:
        return "audio" in self.output_modalities

    def to_protocol(self, session_id: str, model: str) -> dict[str, Any]:
        audio_format = {"type": "audio/pcm", "rate": PROTOCOL_RATE}
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": audio_format,
                    "transcription": {"model": "whisper-tiny.en"} if self.transcribe_input else None,
                    "noise_reduction": None,
                    "turn_detection": self.turn_detection.to_protocol() if self.turn_detection else None,
                },
                "output": {"format": audio_format, "voice": self.voice, "speed": self.speed},
            },
            "max_output_tokens": self.max_output_tokens if self.max_output_tokens is not None else "inf",
            "tools": [],
            "tool_choice": "auto",
        }


def is_beta_shape(session: dict[str, Any]) -> bool:
    beta_keys = {"input_audio_format", "output_audio_format", "modalities", "input_audio_transcription",
                 "turn_detection", "max_response_output_tokens"}
    return "type" not in session and bool(beta_keys & session.keys())


def apply_update(config: SessionConfig, session: Any) -> SessionConfig:
    """A new config with `session` applied; raises ProtocolError (and changes nothing) if any field is bad."""
    if not isinstance(session, dict):
        raise ProtocolError(errors.INVALID_VALUE, "`session` must be an object", param="session")
    updated = dataclasses.replace(config)
    kind = session.get("type", "realtime")
    if kind != "realtime":
        raise ProtocolError(errors.UNSUPPORTED, f"session type {kind!r} is not supported; use 'realtime'",
                            param="session.type")
    if "instructions" in session:
        updated.instructions = string_field(session["instructions"], "session.instructions", MAX_TEXT_CHARS)
    if "output_modalities" in session:
        updated.output_modalities = _modalities(session["output_modalities"], "session.output_modalities")
    if "modalities" in session:  # beta: ["text", "audio"] means audio with its transcript
        modalities = _modalities(session["modalities"], "session.modalities")
        updated.output_modalities = ["audio"] if "audio" in modalities else ["text"]
    if "max_output_tokens" in session:
        updated.max_output_tokens = _max_tokens(session["max_output_tokens"], "session.max_output_tokens")
    if "max_response_output_tokens" in session:
        updated.max_output_tokens = _max_tokens(session["max_response_output_tokens"],
                                                "session.max_response_output_tokens")
    if "temperature" in session:
        updated.temperature = _number(session["temperature"], "session.temperature", 0.0, 2.0)
    if "voice" in session:
        updated.voice = string_field(session["voice"], "session.voice", MAX_NAME_CHARS) or config.voice
    for key in ("input_audio_format", "output_audio_format"):
        if key in session:
            _audio_format(session[key], f"session.{key}")
    if "input_audio_transcription" in session:
        updated.transcribe_input = session["input_audio_transcription"] is not None
    if "turn_detection" in session:
        updated.turn_detection = _turn_detection(session["turn_detection"], config.turn_detection,
                                                 "session.turn_detection")
    audio = session.get("audio")
    if audio is not None:
        _apply_audio(updated, config, _object(audio, "session.audio"))
    return updated


def _apply_audio(updated: SessionConfig, previous: SessionConfig, audio: dict[str, Any]) -> None:
    audio_in = audio.get("input")
    if audio_in is not None:
        audio_in = _object(audio_in, "session.audio.input")
        if "format" in audio_in and audio_in["format"] is not None:
            _audio_format(audio_in["format"], "session.audio.input.format")
        if "transcription" in audio_in:
            updated.transcribe_input = audio_in["transcription"] is not None
        if "turn_detection" in audio_in:
            updated.turn_detection = _turn_detection(audio_in["turn_detection"], previous.turn_detection,
                                                     "session.audio.input.turn_detection")
    audio_out = audio.get("output")
    if audio_out is not None:
        audio_out = _object(audio_out, "session.audio.output")
        if "format" in audio_out and audio_out["format"] is not None:
            _audio_format(audio_out["format"], "session.audio.output.format")
        if "voice" in audio_out and audio_out["voice"] is not None:
            voice = audio_out["voice"]
            if isinstance(voice, dict):  # {"id": "..."} custom voice form
                voice = voice.get("id")
            updated.voice = string_field(voice, "session.audio.output.voice", MAX_NAME_CHARS) or previous.voice
        if "speed" in audio_out and audio_out["speed"] is not None:
            updated.speed = _number(audio_out["speed"], "session.audio.output.speed", 0.25, 4.0)


_SEMANTIC_WINDOWS_MS = {"low": 800, "medium": 500, "auto": _VAD_DEFAULTS.silence_duration_ms, "high": 320}


def _turn_detection(value: Any, previous: TurnDetection | None, param: str) -> TurnDetection | None:
    if value is None:
        return None
    value = _object(value, param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(errors.INVALID_VALUE, f"turn detection type must be 'server_vad' or "
                            f"'semantic_vad', got {kind!r}", param=f"{param}.type")
    result = dataclasses.replace(previous) if previous else TurnDetection()
    result.kind = kind
    if kind == "semantic_vad":
        eagerness = value.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in _SEMANTIC_WINDOWS_MS:
            raise ProtocolError(errors.INVALID_VALUE, f"eagerness must be one of {sorted(_SEMANTIC_WINDOWS_MS)}",
                                param=f"{param}.eagerness")
        result.silence_duration_ms = _SEMANTIC_WINDOWS_MS[eagerness]
    if "threshold" in value and value["threshold"] is not None:
        result.threshold = _number(value["threshold"], f"{param}.threshold", 0.0, 1.0)
    if "prefix_padding_ms" in value and value["prefix_padding_ms"] is not None:
        result.prefix_padding_ms = int(_number(value["prefix_padding_ms"], f"{param}.prefix_padding_ms", 0, 5000))
    if "silence_duration_ms" in value and value["silence_duration_ms"] is not None:
        result.silence_duration_ms = int(
            _number(value["silence_duration_ms"], f"{param}.silence_duration_ms", 50, 10_000))
    for flag in ("create_response", "interrupt_response"):
        if flag in value and value[flag] is not None:
            if not isinstance(value[flag], bool):
                raise ProtocolError(errors.INVALID_VALUE, f"{flag} must be true or false", param=f"{param}.{flag}")
            setattr(result, flag, value[flag])
    return result


def _audio_format(value: Any, param: str) -> None:
    """Only PCM16 mono at 24 kHz is served; anything else is refused clearly rather than misread."""
    if value == "pcm16":
        return
    if isinstance(value, dict) and value.get("type") in ("audio/pcm", "pcm16"):
        rate = value.get("rate", PROTOCOL_RATE)
        if rate != PROTOCOL_RATE:
            raise ProtocolError(errors.INVALID_VALUE, f"only {PROTOCOL_RATE} Hz PCM16 is supported, got {rate!r}",
                                param=f"{param}.rate")
        return
    raise ProtocolError(errors.UNSUPPORTED, f"audio format {value!r} is not supported; use "
                        f"{{'type': 'audio/pcm', 'rate': {PROTOCOL_RATE}}}", param=param)


def _modalities(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise ProtocolError(errors.INVALID_VALUE, "modalities must be a non-empty list of 'text' and/or 'audio'",
                            param=param)
    return ["audio"] if "audio" in value else ["text"]


def _max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ProtocolError(errors.INVALID_VALUE, "max output tokens must be 1..4096 or 'inf'", param=param)
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(errors.INVALID_VALUE, f"{param} must be an object", param=param)
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProtocolError(errors.INVALID_VALUE, f"{param} must be a number in [{low}, {high}]", param=param)
    return float(value)
