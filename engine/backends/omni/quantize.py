"""Weight quantization for the thinker and talker: int8 weight-only (CPU and GPU), 4-bit on CUDA.

int8 uses torch's own kernel (`torch._weight_int8pack_mm`, per-output-channel scales) rather than torchao:
torchao 0.18 works with torch 2.13 but, once installed, transformers imports it on every model load and it
prints failed loads of its CUDA extensions on CPU machines; torch's kernel needs no extra package.
4-bit goes through bitsandbytes NF4 at load time (transformers' BitsAndBytesConfig), which needs CUDA.
The vocoder (DiT + BigVGAN) always stays float32: transformers runs it in fp32 by design and it is a small
share of the weights.
"""

from __future__ import annotations

import torch
from torch import nn

class QuantizationUnavailable(RuntimeError):
    """The asked-for quantization cannot run here; the message says why and what to do."""


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with one float scale per output row; activations stay in float."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        try:
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales.to(flat.dtype))
        except (RuntimeError, NotImplementedError):  # a device/dtype without the packed kernel: dequantize
            out = flat @ (self.weight_int8.to(flat.dtype) * self.scales.to(flat.dtype)[:, None]).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def quantize_int8(module: nn.Module, skip: tuple[str, ...] = ("lm_head", "codec_head")) -> int:
    """Replace every nn.Linear under `module` (but the output heads, where rounding shows most) in place.

    Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name not in skip:
            setattr(module, name, Int8Linear(child))
            replaced += 1
        else:
            replaced += quantize_int8(child, skip)
    return replaced


def int4_load_arguments(device: str) -> dict:
    """from_pretrained arguments for NF4 weights; raises QuantizationUnavailable without CUDA or bitsandbytes."""
    if device != "cuda" or not torch.cuda.is_available():
        raise QuantizationUnavailable(
            "4-bit quantization (bitsandbytes NF4) needs an NVIDIA GPU with CUDA, and none is available here; "
            "use --omni-quantization int8 (works on CPU) or none")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailable("4-bit quantization needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        # The vocoder must stay in fp32, and the heads and encoders are small: only the two LMs go 4-bit.
        llm_int8_skip_modules=["token2wav", "lm_head", "codec_head", "audio_tower", "visual"])}


