"""Codec tokens → 24 kHz speech in chunks, so the first audio leaves after the first chunk.

The DiT turns codes into a mel spectrogram by integrating an ODE from noise; BigVGAN turns mel into samples.
Streaming runs both on a sliding window: each chunk is computed with `lookback` blocks of codes before it
and `lookahead` blocks after it, and only its own frames are kept.

Why chunked audio can match whole-reply audio:
- The noise the ODE starts from is fixed per DiT block (seeded by block index), so a frame starts from the
  same noise whichever window computes it.
- Windows start on a DiT block boundary, so the model's block-attention mask sees the same block layout.
- RoPE makes attention depend on relative positions only, so a window's offset does not matter.
What still differs: a frame's receptive field grows with every ODE evaluation (40 of them), so context
outside the window is missed; the lookback/lookahead trade this error against latency. With windows that
cover the whole reply, chunked equals whole to float precision (tests/engine/test_omni_token2wav.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ChunkSettings:
    chunk_blocks: int = 2  # DiT blocks per emitted chunk (real model: 24 mel frames = 0.24 s per block)
    first_chunk_blocks: int = 1  # a shorter first chunk gets the first sound out sooner
    lookback_blocks: int = 2
    lookahead_blocks: int = 1
    vocoder_context_frames: int = 16  # mel frames either side for BigVGAN's convolutions
    ode_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: float = -1.0


def dit_sample(dit, conditioning: torch.Tensor, reference_mel: torch.Tensor, codes: torch.Tensor,
               noise: torch.Tensor, steps: int = 10, guidance_scale: float = 0.5,
               sway_coefficient: float = -1.0) -> torch.Tensor:
    """transformers' Qwen2_5OmniToken2WavDiTModel.sample with the starting noise passed in, not drawn.

    Returns mel (1, mel_dim, frames)."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    frames = codes.shape[1] * dit.repeats
    condition = conditioning.unsqueeze(1).repeat(1, frames, 1)

    def velocity(time_step, state):
        if guidance_scale < 1e-5:
            return dit(hidden_states=state, speaker_embedding=condition, condition_vector=reference_mel,
                       quantized_code=codes, time_step=time_step, drop_audio_conditioning=False, drop_code=False,
                       apply_cfg=False)
        output = dit(hidden_states=state, quantized_code=codes, speaker_embedding=condition,
                     condition_vector=reference_mel, time_step=time_step, apply_cfg=True)
        guided, unguided = torch.chunk(output, 2, dim=0)
        return guided + (guided - unguided) * guidance_scale

    times = torch.linspace(0, 1, steps, device=codes.device, dtype=condition.dtype)
    if sway_coefficient is not None:
        times += sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
    trajectory = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)
    return trajectory[-1].permute(0, 2, 1)


class BlockNoise:
    """The ODE's starting noise, drawn per DiT block from (seed, block) so any window gets the same values."""

    def __init__(self, block_frames: int, mel_dim: int, seed: int, device, dtype=torch.float32):
        self.block_frames, self.mel_dim, self.seed = block_frames, mel_dim, seed
        self.device, self.dtype = device, dtype
        self._blocks: dict[int, torch.Tensor] = {}

    def frames(self, start: int, end: int) -> torch.Tensor:
        first, last = start // self.block_frames, math.ceil(end / self.block_frames)
        blocks = [self._block(b) for b in range(first, last)]
        joined = torch.cat(blocks, dim=0)
        offset = first * self.block_frames
        return joined[start - offset:end - offset].unsqueeze(0)

    def _block(self, index: int) -> torch.Tensor:
        if index not in self._blocks:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            block = torch.randn(self.block_frames, self.mel_dim, generator=generator)
            self._blocks[index] = block.to(self.device, self.dtype)
        return self._blocks[index]


class Token2Wav:
    """One reply's vocoder: `push` codes as the talker makes them, get audio chunks; `finish` flushes."""

    def __init__(self, token2wav, speaker: dict, settings: ChunkSettings = ChunkSettings(), seed: int = 0):
        self.dit = token2wav.code2wav_dit_model
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.settings = settings
        device = next(token2wav.parameters()).device
        self.device = device
        self.conditioning = speaker["cond"].to(device).float()
        self.reference_mel = speaker["ref_mel"].to(device).float()
        self.repeats = self.dit.repeats
        self.block_frames = self.dit.block_size
        if self.block_frames % self.repeats:
            raise ValueError("the DiT block size must be a whole number of codes")
        self.block_codes = self.block_frames // self.repeats
        self.hop = math.prod(self.vocoder.config.upsample_rates)  # samples per mel frame (240 at 24 kHz)
        self.noise = BlockNoise(self.block_frames, self.dit.mel_dim, seed, device)
        self.codes: list[int] = []
        self.done_blocks = 0
        self.done_codes = 0
        self._mel_history: torch.Tensor | None = None  # emitted mel frames, the vocoder's left context

    # --- streaming ---------------------------------------------------------------------------------

    def push(self, codes: list[int]) -> list[np.ndarray]:
        """Add codes and return every chunk they complete."""
        self.add(codes)
        chunks = []
        while (chunk := self.next_chunk()) is not None:
            chunks.append(chunk)
        return chunks

    def add(self, codes: list[int]) -> None:
        self.codes.extend(codes)

    def next_chunk(self) -> np.ndarray | None:
        """The next chunk if its codes and lookahead are all there; one chunk a call, so a caller can stop
        between chunks."""
        size = self.settings.first_chunk_blocks if self.done_blocks == 0 else self.settings.chunk_blocks
        target_blocks = self.done_blocks + size
        if len(self.codes) < (target_blocks + self.settings.lookahead_blocks) * self.block_codes:
            return None
        chunk = self._emit(target_blocks * self.block_codes)
        self.done_blocks = target_blocks
        return chunk

    def finish(self) -> np.ndarray:
        if self.done_codes >= len(self.codes):
            return np.zeros(0, np.float32)
        audio = self._emit(len(self.codes))
        self.done_blocks = math.ceil(len(self.codes) / self.block_codes)
        return audio

    # --- whole reply (the reference the streamed audio is held to) ----------------------------------

    def whole(self, codes: list[int]) -> np.ndarray:
        code_tensor = torch.tensor([codes], dtype=torch.long, device=self.device)
        mel = self._mel(code_tensor, 0, len(codes) * self.repeats)
        return self._wave(mel)

    # --- internals ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _emit(self, target_code: int) -> np.ndarray:
        s = self.settings
        window_start = max(0, self.done_blocks - s.lookback_blocks) * self.block_codes
        window_end = min(len(self.codes), target_code + s.lookahead_blocks * self.block_codes)
        codes = torch.tensor([self.codes[window_start:window_end]], dtype=torch.long, device=self.device)
        mel = self._mel(codes, window_start * self.repeats, window_end * self.repeats)
        keep_from = (self.done_codes - window_start) * self.repeats
        keep_to = (target_code - window_start) * self.repeats
        new = mel[:, :, keep_from:keep_to]
        ahead = mel[:, :, keep_to:keep_to + s.vocoder_context_frames]  # estimated future, for BigVGAN only
        behind = self._mel_history[:, :, -s.vocoder_context_frames:] if self._mel_history is not None \
            else new[:, :, :0]
        wave = self._wave(torch.cat([behind, new, ahead], dim=2))
        start = behind.shape[2] * self.hop
        audio = wave[start:start + new.shape[2] * self.hop]
        self._mel_history = new if self._mel_history is None else \
            torch.cat([self._mel_history, new], dim=2)[:, :, -s.vocoder_context_frames:]
        self.done_codes = target_code
        return audio

    def _mel(self, codes: torch.Tensor, frame_start: int, frame_end: int) -> torch.Tensor:
        s = self.settings
        with torch.inference_mode():
            return dit_sample(self.dit, self.conditioning, self.reference_mel, codes,
                              self.noise.frames(frame_start, frame_end), s.ode_steps, s.guidance_scale,
                              s.sway_coefficient)

    def _wave(self, mel: torch.Tensor) -> np.ndarray:
        if mel.shape[2] == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            wave = self.vocoder(mel)
        return wave.reshape(-1).float().cpu().numpy()
