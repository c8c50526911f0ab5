"""Find the omni weights, check they fit, and load model, tokenizer and feature processors.

Nothing is downloaded here: weights come from a local folder (`--omni-model PATH`), from the model store
(after `confide-engine models fetch qwen2.5-omni-3b`), or, for tests and benchmarks without weights, from
`tiny` (a random-weight model of the real architecture). Each failure is an OmniLoadError whose message
says what to do.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.backends.omni.prompt import Processors
from engine.backends.omni.quantize import QuantizationUnavailable, int4_load_arguments, quantize_int8
from engine.backends.omni.settings import QUANTIZATIONS, TINY, NotEnoughMemory, OmniLoadError, OmniSettings
from engine.models.store import ModelFileError, ModelStore

log = logging.getLogger(__name__)

ACTIVATION_MARGIN_BYTES = 1_500_000_000  # KV caches, vocoder windows and the CUDA/allocator overhead


@dataclass
class LoadedOmni:
    model: object
    processors: Processors
    device: str
    dtype: torch.dtype
    description: str
    weight_bytes: int
    load_seconds: float
    eos_ids: tuple[int, ...]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OmniLoadError("--omni-device cuda was asked for but no CUDA GPU is available "
                            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    return device


def required_bytes(checkpoint_bytes: int, device: str, quantization: str) -> int:
    """Peak memory while loading (the checkpoint is bf16): float32 on CPU doubles it; int8 loads bf16 and
    replaces the LMs' layers one by one (then the small rest goes float32 on CPU); NF4 packs at load."""
    factor = {("cpu", "none"): 2.0, ("cpu", "int8"): 1.1, ("cuda", "none"): 1.0, ("cuda", "int8"): 1.0,
              ("cuda", "int4"): 0.4}[(device, quantization)]
    return int(checkpoint_bytes * factor) + ACTIVATION_MARGIN_BYTES


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(checkpoint_bytes: int, device: str, quantization: str, available: int | None = None) -> None:
    need = required_bytes(checkpoint_bytes, device, quantization)
    have = available_bytes(device) if available is None else available
    if need > have:
        what = "GPU memory (VRAM)" if device == "cuda" else "RAM"
        hint = {"none": "try --omni-quantization int8" + (" or int4" if device == "cuda" else ""),
                "int8": "try --omni-quantization int4 on a CUDA GPU" if device == "cuda" else
                "use a GPU, or the smaller 3B model", "int4": "use the 3B model or a larger GPU"}[quantization]
        raise NotEnoughMemory(f"not enough {what} for this omni model: it needs about {need / 1e9:.1f} GB "
                              f"({quantization} on {device}), {have / 1e9:.1f} GB is free; {hint}")


def checkpoint_folder(model: str, store: ModelStore) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            raise OmniLoadError(f"{path} does not hold a Qwen2.5-Omni checkpoint (config.json and *.safetensors); "
                                "point --omni-model at the folder of a downloaded checkpoint")
        return path
    try:
        return store.resolve(model).directory
    except ModelFileError as error:
        raise OmniLoadError(f"no omni weights: {error}") from error
    except KeyError as error:
        raise OmniLoadError(f"no omni weights: {model!r} is neither a folder nor a known model id; "
                            "use --omni-model PATH, or fetch one: confide-engine models fetch qwen2.5-omni-3b") from error


def load(settings: OmniSettings, store: ModelStore | None = None) -> LoadedOmni:
    if settings.quantization not in QUANTIZATIONS:
        raise OmniLoadError(f"unknown quantization {settings.quantization!r}; choose from {', '.join(QUANTIZATIONS)}")
    started = time.monotonic()
    device = resolve_device(settings.device)
    try:
        if settings.quantization == "int4":
            int4_arguments = int4_load_arguments(device)  # fails fast, before reading gigabytes
    except QuantizationUnavailable as error:
        raise OmniLoadError(str(error)) from error
    if settings.model == TINY:
        model, processors, size = _tiny(settings)
        dtype = torch.float32
    else:
        folder = checkpoint_folder(settings.model, store or ModelStore())
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        check_memory(size, device, settings.quantization)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        load_dtype = torch.bfloat16 if settings.quantization == "int8" else dtype  # never a float32 copy to shrink
        from transformers import AutoTokenizer, Qwen2_5OmniForConditionalGeneration, WhisperFeatureExtractor
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        extra = int4_arguments if settings.quantization == "int4" else {}
        if device == "cuda":  # straight onto the GPU, never a second copy in host RAM; needs accelerate
            extra["device_map"] = {"": device}
            _require("accelerate", "loading onto a GPU")
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(
            folder, dtype=load_dtype, local_files_only=True, **extra).eval()
        processors = Processors(AutoTokenizer.from_pretrained(folder, local_files_only=True),
                                WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True),
                                Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True,
                                                                         max_pixels=settings.max_pixels))
    model.token2wav.float()  # the vocoder runs in float32 whatever the LMs use
    if settings.quantization == "int8":
        replaced = quantize_int8(model.thinker.model.language_model) + quantize_int8(model.talker.model)
        log.info("int8 weight-only: %d linear layers of the thinker and talker", replaced)
        if dtype == torch.float32:
            model.float()  # the encoders, heads and scales; int8 weights stay int8
    model = model.to(device) if settings.quantization != "int4" else model
    tokenizer = processors.tokenizer
    eos_ids = tuple(i for i in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                tokenizer.convert_tokens_to_ids("<|endoftext|>")) if isinstance(i, int))
    if settings.speaker not in model.speaker_map:
        raise OmniLoadError(f"speaker {settings.speaker!r} is not in this checkpoint; it has: "
                            f"{', '.join(model.speaker_map)}")
    description = f"qwen2.5-omni/{Path(settings.model).name}@{device}/{settings.quantization}"
    return LoadedOmni(model, processors, device, dtype, description, size, time.monotonic() - started, eos_ids)


def _require(package: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise OmniLoadError(f"{purpose} needs the {package} package: pip install {package} "
                            "(or pip install 'confide[omni]')")


def _tiny(settings: OmniSettings):
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from engine.backends.omni.tiny import build_tiny_model, tiny_tokenizer

    model = build_tiny_model(seed=settings.seed or 0)
    mel_bins = model.config.thinker_config.audio_config.num_mel_bins
    processors = Processors(tiny_tokenizer(), WhisperFeatureExtractor(feature_size=mel_bins),
                            Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, processors, size
