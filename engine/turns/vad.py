"""Silero VAD (v5+ ONNX): the probability that a 32 ms frame of 16 kHz audio holds speech.

The loaded model is shared and safe to run from several threads (onnxruntime sessions are);
everything that depends on the audio so far lives in a `VadStream`, one per audio stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 512  # the only frame size the v5+ model takes at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # v5+ wants the previous frame's last 64 samples in front of each frame
FRAME_MS = FRAME_SAMPLES * 1000 / SAMPLE_RATE
_STATE_SHAPE = (2, 1, 128)


class SileroVadModel:
    def __init__(self, path: str | Path):
        options = ort.SessionOptions()
        # One frame is ~0.1 ms of work: more threads only add hand-off cost and steal a core.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise ValueError(f"{path}: not a Silero VAD v5+ model (inputs {sorted(names)})")

    def stream(self) -> VadStream:
        return VadStream(self)


class VadStream:
    """Recurrent state and context of one audio stream; one thread at a time."""

    def __init__(self, model: SileroVadModel):
        self._window = np.zeros((1, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._next_state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._output = np.zeros((1, 1), dtype=np.float32)
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)
        # Binding these buffers once saves ~25% per frame over session.run's dict of fresh arrays.
        self._session = model.session
        self._binding = binding = model.session.io_binding()
        binding.bind_input("input", "cpu", 0, np.float32, list(self._window.shape), self._window.ctypes.data)
        binding.bind_input("state", "cpu", 0, np.float32, list(_STATE_SHAPE), self._state.ctypes.data)
        binding.bind_cpu_input("sr", self._rate)
        binding.bind_output("output", "cpu", 0, np.float32, [1, 1], self._output.ctypes.data)
        binding.bind_output("stateN", "cpu", 0, np.float32, list(_STATE_SHAPE), self._next_state.ctypes.data)

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of the next 512-sample 16 kHz frame."""
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"a VAD frame is {FRAME_SAMPLES} samples at 16 kHz, got {frame.shape}")
        self._window[0, CONTEXT_SAMPLES:] = frame
        self._session.run_with_iobinding(self._binding)
        self._state[...] = self._next_state
        self._window[0, :CONTEXT_SAMPLES] = frame[-CONTEXT_SAMPLES:]
        return float(self._output[0, 0])

    def reset(self) -> None:
        self._window.fill(0.0)
        self._state.fill(0.0)
