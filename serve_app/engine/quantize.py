"""Weight-only 8-bit quantization of the LM's transformer linears, applied once after loading.

The 7B LM's weights are 14.3 GiB in bf16; on a 24 GB card they leave room for 4 slots. Stored in 8 bits
with one scale per output channel they take half, and the memory freed holds more slots (each slot's
KV ring stays in the compute dtype: sizing counts it from `WeightOnlyLinear.compute_dtype`).
Only the linears inside the temporal transformer and the depformer are converted (attention projections
and the gated feed-forwards: 93 % of the 7B LM's parameters); embeddings, the text and audio output heads,
and Mimi stay as loaded, so the logits are computed by unquantized heads.

- `int8`: symmetric per-output-channel int8, multiplied with `torch._weight_int8pack_mm` where that kernel
  runs on the device and is faster, else converted to the compute dtype inside the matmul.
- `fp8`: float8_e4m3fn with a per-output-channel scale, converted to the compute dtype inside the matmul
  (it saves memory, not time). On CUDA it needs compute capability 8.9 or newer (Ada, Hopper); on a CPU it
  runs emulated, for tests.

Self-contained rather than torchao: torchao is not installed here, its wheels are tied to torch versions
(2.13 on this machine, 2.11 on the GPU hosts), and the GPU check must run with pure-Python wheels only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from moshi.modules.gating import ActivationGating, gating_forward_generic
from moshi.modules.transformer import StreamingTransformer
from torch import nn

logger = logging.getLogger(__name__)

QuantizeMode = Literal["none", "int8", "fp8"]
Kernel = Literal["int8pack_mm", "dequant"]

FP8_MIN_CAPABILITY = (8, 9)
"""float8_e4m3fn hardware support: Ada (8.9) and Hopper (9.0) onwards."""
_INT8_MAX = 127
_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)


class QuantizationUnsupported(ValueError):
    """The requested quantization cannot run on this device; the message says why and what to use."""


def check_supported(mode: QuantizeMode, device: torch.device) -> None:
    """Raise QuantizationUnsupported before anything is loaded if `mode` cannot run on `device`."""
    if mode != "fp8" or device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        required = ".".join(map(str, FP8_MIN_CAPABILITY))
        raise QuantizationUnsupported(
            f"quantize: fp8 needs a GPU of compute capability {required} or newer (Ada, Hopper); "
            f"{name} is {capability[0]}.{capability[1]}. Use quantize: int8."
        )


def quantize_weight(weight: torch.Tensor, mode: QuantizeMode) -> tuple[torch.Tensor, torch.Tensor]:
    """(8-bit weight [out, in], scale [out] in the weight's dtype) with weight ≈ q * scale[:, None].

    The scale is rounded to the compute dtype before the weights are divided by it, so the stored values
    are exact for the scale the matmul will use.
    """
    if mode == "none":
        raise ValueError("quantize_weight needs int8 or fp8")
    full = weight.detach().float()
    top = _INT8_MAX if mode == "int8" else _FP8_MAX
    amax = full.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
    scale = (amax / top).to(weight.dtype)
    scaled = full / scale.float()[:, None]
    if mode == "int8":
        q = scaled.round().clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    else:
        q = scaled.clamp(-_FP8_MAX, _FP8_MAX).to(_FP8)
    return q, scale


class WeightOnlyLinear(nn.Linear):
    """A bias-optional linear whose weight is stored in 8 bits with one scale per output channel.

    An `nn.Linear` subclass because moshi's attention sizes its KV cache from `in_projs[0].weight.dtype`
    and accepts only the linear types it knows; `weight` therefore returns the dequantized weight (in
    the compute dtype), which keeps any code reading it correct. `forward` never materialises it.
    """

    compute_dtype: torch.dtype
    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, linear: nn.Linear, mode: QuantizeMode, kernel: Kernel) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a full-precision weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.mode: QuantizeMode = mode
        self.kernel: Kernel = kernel if mode == "int8" else "dequant"
        self.compute_dtype = linear.weight.dtype
        qweight, scale = quantize_weight(linear.weight, mode)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_parameter("bias", linear.bias)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]  # read-only: the stored weight is `qweight`
        return self.qweight.to(self.compute_dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "int8pack_mm":
            flat = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight, self.scale)
            y = flat.reshape(*x.shape[:-1], self.out_features)
        else:
            # Per-output-channel scale: scaling the output equals scaling the weight's rows, and is cheaper.
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, kernel={self.kernel}"


class GenericGating(nn.Module):
    """moshi's gated feed-forward calling its linears as modules.

    `ActivationGating` reads `linear_in.weight` directly when its linears are `nn.Linear`s; with
    `WeightOnlyLinear`s that would dequantize the largest matrices on every step.
    """

    def __init__(self, gating: ActivationGating) -> None:
        super().__init__()
        self.linear_in = gating.linear_in
        self.linear_out = gating.linear_out
        self.activation = gating.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, gating_forward_generic(self.linear_in, self.linear_out, self.activation, x))


@dataclass(frozen=True)
class QuantizeReport:
    mode: QuantizeMode
    kernel: Kernel | None
    linears: int
    """Linear layers converted."""
    bytes_before: int
    """The LM's parameters and buffers before conversion."""
    bytes_after: int


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what its weights take on the device)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def pick_int8_kernel(device: torch.device, dtype: torch.dtype) -> Kernel:
    """`int8pack_mm` where torch's fused int8-weight matmul runs on this device and dtype, agrees with the
    dequantizing path and (on CUDA) is faster at the decode shape; else `dequant`."""
    if device.type == "meta":
        return "dequant"
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 256, generator=generator).to(device=device, dtype=dtype)
    x = torch.randn(4, 256, generator=generator).to(device=device, dtype=dtype)
    q, scale = quantize_weight(weight, "int8")
    try:
        fused = torch._weight_int8pack_mm(x, q, scale)
    except (RuntimeError, NotImplementedError) as exc:
        logger.info("torch._weight_int8pack_mm unavailable on %s/%s (%s): dequantizing", device, dtype, exc)
        return "dequant"
    reference = F.linear(x, q.to(dtype)) * scale
    tolerance = 1e-2 * float(reference.float().abs().max())
    if not torch.allclose(fused.float(), reference.float(), atol=tolerance, rtol=0):
        logger.warning("torch._weight_int8pack_mm disagrees with the reference on %s: dequantizing", device)
        return "dequant"
    if device.type != "cuda":
        return "int8pack_mm"
    return _faster_on_cuda(device, dtype)


def _faster_on_cuda(device: torch.device, dtype: torch.dtype) -> Kernel:
    """Time both kernels on a 4096 x 4096 layer at 8 rows (a tick's shape); keep the faster."""
    weight = torch.randn(4096, 4096, device=device, dtype=dtype)
    q, scale = quantize_weight(weight, "int8")
    x = torch.randn(8, 4096, device=device, dtype=dtype)
    seconds: dict[Kernel, float] = {}
    for kernel in ("int8pack_mm", "dequant"):
        for _round in range(2):  # the first round warms up
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            for _ in range(20):
                if kernel == "int8pack_mm":
                    torch._weight_int8pack_mm(x, q, scale)
                else:
                    F.linear(x, q.to(dtype)) * scale
            torch.cuda.synchronize(device)
            seconds[kernel] = time.perf_counter() - started
    chosen: Kernel = min(seconds, key=lambda k: seconds[k])
    logger.info(
        "int8 kernel on %s: %s (%s)", device, chosen, {k: f"{v * 50:.3f} ms" for k, v in seconds.items()}
    )
    return chosen


def quantize_lm(lm: nn.Module, mode: QuantizeMode) -> QuantizeReport:
    """Convert the LM's transformer linears in place (one layer at a time: the peak is one layer over the
    loaded model). Works on meta-device models too, to size a quantized model without its weights."""
    before = module_bytes(lm)
    if mode == "none":
        return QuantizeReport(mode, None, 0, before, before)
    transformers = [m for m in lm.modules() if isinstance(m, StreamingTransformer)]
    if not transformers:
        raise ValueError(f"{type(lm).__name__} has no StreamingTransformer to quantize")
    sample = next(
        m for t in transformers for m in t.modules() if isinstance(m, nn.Linear)
    )  # device and dtype of the weights
    kernel = pick_int8_kernel(sample.weight.device, sample.weight.dtype) if mode == "int8" else "dequant"
    converted = 0
    for transformer in transformers:
        converted += _convert(transformer, mode, kernel)
    after = module_bytes(lm)
    logger.info(
        "quantized %d LM linears to %s (%s): weights %.2f GiB -> %.2f GiB",
        converted,
        mode,
        kernel,
        before / 2**30,
        after / 2**30,
    )
    return QuantizeReport(mode, kernel, converted, before, after)


def _convert(module: nn.Module, mode: QuantizeMode, kernel: Kernel) -> int:
    converted = 0
    for name, child in list(module.named_children()):
        if isinstance(child, WeightOnlyLinear):
            continue
        if isinstance(child, ActivationGating):
            child = GenericGating(child)
            setattr(module, name, child)
        if type(child) is nn.Linear:
            setattr(module, name, WeightOnlyLinear(child, mode, kernel))
            converted += 1
        else:
            converted += _convert(child, mode, kernel)
    return converted


def quantize_mode(lm: nn.Module) -> QuantizeMode:
    """How the LM's linears are stored: the mode of its first WeightOnlyLinear, or none."""
    return next((m.mode for m in lm.modules() if isinstance(m, WeightOnlyLinear)), "none")
