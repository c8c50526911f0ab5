"""One ONNX Runtime CPU session per OCR model, sized to the threads it is given."""

from __future__ import annotations

from pathlib import Path

import onnxruntime


def cpu_session(model: Path | bytes, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads must sleep, not spin: speech recognition may be running on the other core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    options.enable_mem_pattern = False  # every screenshot has its own shapes: no memory plan per shape (see speech/tts.py)
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
