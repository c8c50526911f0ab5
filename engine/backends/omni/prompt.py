"""The thinker's input for one reply, built only from the turns the Realtime session hands over.

The session has already cut each assistant turn to what the listener heard (truncate), so the model's
history is exactly what was said and heard: nothing of a cancelled reply survives here. User audio goes in
as audio (the thinker hears tone, not a transcript); a user turn whose audio the conversation has forgotten
goes in as its transcript (transcripts.py); screenshots go in as images.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.audio.pcm import PROTOCOL_RATE, resample
from engine.backends.base import ReplyRequest, Turn

# Qwen2.5-Omni only speaks when its system prompt starts with this sentence (its model card says so).
SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
                 "auditory and visual inputs, as well as generating text and speech.")
ENCODER_RATE = 16_000  # the audio encoder's Whisper features are computed at 16 kHz


@dataclass
class Processors:
    tokenizer: object
    feature_extractor: object  # transformers WhisperFeatureExtractor
    image_processor: object  # transformers Qwen2VLImageProcessorPil (no torchvision needed)
    # Every prompt holds the whole history: its screenshots and audio are processed once, not every turn.
    memo: dict = field(default_factory=dict)

    def remembered(self, key: tuple, make):
        if key not in self.memo:
            if len(self.memo) >= 64:
                self.memo.pop(next(iter(self.memo)))
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class PromptInputs:
    input_ids: torch.Tensor  # (1, tokens)
    input_features: torch.Tensor | None = None  # (audios, mel bins, frames)
    feature_attention_mask: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    dropped_turns: int = 0  # oldest turns left out to fit the token budget
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def audio_lengths(self) -> torch.Tensor | None:
        return None if self.feature_attention_mask is None else self.feature_attention_mask.sum(-1)

    def to(self, device, dtype) -> PromptInputs:
        def move(tensor, float_dtype=None):
            if tensor is None:
                return None
            return tensor.to(device, float_dtype) if float_dtype else tensor.to(device)
        return PromptInputs(move(self.input_ids), move(self.input_features, dtype), move(self.feature_attention_mask),
                            move(self.pixel_values, dtype), move(self.image_grid_thw), self.dropped_turns, self.counts)


def audio_token_count(feature_frames: int) -> int:
    """Tokens the audio encoder makes of `feature_frames` mel frames (two stride-2 stages)."""
    after_conv = (feature_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


class _Segment:
    def __init__(self, text: str, audios=(), images=(), tokens: int = 0):
        self.text, self.audios, self.images, self.tokens = text, list(audios), list(images), tokens


def build_prompt(request: ReplyRequest, processors: Processors, max_tokens: int = 8192) -> PromptInputs:
    tokenizer = processors.tokenizer
    system = SYSTEM_PROMPT + (("\n" + request.instructions.strip()) if request.instructions.strip() else "")
    head = _Segment(f"<|im_start|>system\n{system}<|im_end|>\n")
    tail = _Segment("<|im_start|>assistant\n")
    turns = [segment for turn in request.turns if (segment := _turn(turn, processors)) is not None]
    for segment in (head, tail, *turns):
        segment.tokens += len(tokenizer(segment.text, add_special_tokens=False).input_ids)
    budget = max_tokens - head.tokens - tail.tokens
    kept: list[_Segment] = []
    for segment in reversed(turns):  # newest first; the newest turn is always kept
        if kept and budget - segment.tokens < 0:
            break
        kept.insert(0, segment)
        budget -= segment.tokens
    segments = [head, *kept, tail]
    text = "".join(s.text for s in segments)
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids], dtype=torch.long)
    inputs = PromptInputs(input_ids, dropped_turns=len(turns) - len(kept))
    audios = [a for s in segments for a in s.audios]
    images = [i for s in segments for i in s.images]
    if audios:
        inputs.input_features = torch.cat([a[0] for a in audios], dim=0) if len(audios) == 1 else _pad_features(audios)
        inputs.feature_attention_mask = _pad_masks([a[1] for a in audios])
    if images:
        inputs.pixel_values = torch.cat([i[0] for i in images], dim=0)
        inputs.image_grid_thw = torch.cat([i[1] for i in images], dim=0)
    inputs.counts = {"audios": len(audios), "images": len(images), "tokens": int(input_ids.shape[1])}
    return inputs


def _turn(turn: Turn, processors: Processors) -> _Segment | None:
    role = turn.role if turn.role in ("user", "assistant", "system") else "user"
    parts, audios, images = [], [], []
    for image in turn.images:
        pixels, grid = processors.remembered(("image", hashlib.sha1(image.data).digest()),
                                             lambda data=image.data: _image(data, processors.image_processor))
        merge = processors.image_processor.merge_size
        parts.append("<|vision_bos|>" + "<|IMAGE|>" * int(grid.prod() // merge ** 2) + "<|vision_eos|>")
        images.append((pixels, grid))
    if role == "user" and turn.audio is not None and turn.audio.size:
        audio = turn.audio
        features, mask = processors.remembered(("audio", hashlib.sha1(audio.tobytes()).digest(), audio.dtype.str),
                                               lambda: _audio(audio, processors.feature_extractor))
        parts.append("<|audio_bos|>" + "<|AUDIO|>" * audio_token_count(int(mask.sum())) + "<|audio_eos|>")
        audios.append((features, mask))
    elif turn.text.strip():
        parts.append(turn.text.strip())
    if not parts:
        return None  # e.g. an old user turn whose audio was forgotten and never transcribed (transcription off)
    return _Segment(f"<|im_start|>{role}\n{''.join(parts)}<|im_end|>\n", audios, images)


def _audio(pcm: np.ndarray, feature_extractor) -> tuple[torch.Tensor, torch.Tensor]:
    audio = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    audio16k = resample(audio, PROTOCOL_RATE, ENCODER_RATE)
    out = feature_extractor([audio16k], sampling_rate=ENCODER_RATE, return_attention_mask=True, padding="longest",
                            truncation=False, return_tensors="pt")
    return out["input_features"], out["attention_mask"]


def _image(data: bytes, image_processor) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = image_processor(images=[image], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def _pad_features(audios) -> torch.Tensor:
    longest = max(a[0].shape[-1] for a in audios)
    return torch.cat([torch.nn.functional.pad(a[0], (0, longest - a[0].shape[-1])) for a in audios], dim=0)


def _pad_masks(masks) -> torch.Tensor:
    longest = max(m.shape[-1] for m in masks)
    return torch.cat([torch.nn.functional.pad(m, (0, longest - m.shape[-1])) for m in masks], dim=0)
