"""Quantized weights: which methods exist, where each one runs, and the CPU's own int8.

``AVCHAT_QUANTIZATION`` / ``--quantization`` names one method:

- ``none``: the weights in the dtype asked for (the default).
- ``int8``: weight-only int8 for every linear layer of SigLIP, Whisper and the LLM, on a CPU
  (the transformers engine). The projectors, embeddings, norms and convolutions keep the dtype.
  Weights are stored per output channel as int8 with one scale each (symmetric, round to
  nearest), so memory for them halves against bfloat16 (a quarter of float32) and activations
  are untouched. How a layer multiplies depends on the rows it gets (see :class:`Int8Linear`).
- ``fp8``, ``awq``, ``gptq``: handed to vLLM for the LLM on a GPU. fp8 quantizes at load;
  awq and gptq need an LLM folder quantized beforehand (its ``config.json`` has a
  ``quantization_config`` of that method). The encoders stay in the dtype.
- ``bnb-8bit``, ``bnb-4bit``: bitsandbytes for the LLM in the transformers engine on a GPU.

Why weight-only int8 and not dynamic int8 (activations quantized too): measured on the 2-core
Sapphire Rapids CPU this project is tested on, with AMX for bfloat16, a bfloat16 matmul of
SigLIP's size (5832 x 1152 x 4304) takes 38 ms, PyTorch's dynamic int8 linear 166 ms (x86
engine) or 186 ms (oneDNN), and oneDNN's int8 kernel with the activations quantized in eager
PyTorch 42 ms: dynamic int8 only pays on CPUs without bfloat16 matrix units. For one row (a
generated token, which reads every weight once) PyTorch's int8 weight kernel takes 0.15 ms
against bfloat16's 0.42 ms. So: int8 weights everywhere (memory), the int8 kernel for short
inputs (decoding), bfloat16 matmuls on the dequantized weight for long ones (SigLIP, Whisper,
prefill).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

METHODS = ("none", "int8", "fp8", "awq", "gptq", "bnb-8bit", "bnb-4bit")
VLLM_METHODS = ("fp8", "awq", "gptq")
BNB_METHODS = ("bnb-8bit", "bnb-4bit")
QUANTIZED_PARTS = ("vision_tower", "audio_tower", "llm")  # the projectors are small and were trained: kept
SHORT_ROWS = 16  # inputs with at most this many rows use the int8 kernel; longer ones a dequantized matmul


class QuantizationUnavailable(ValueError):
    """A method that cannot run with this engine, device or installation; the message says what would."""


def check(method: str, engine: str, device: str, llm_folder: str | None = None) -> None:
    """Raises :class:`QuantizationUnavailable` unless ``method`` works with ``engine``
    (``transformers`` or ``vllm``, already chosen) on ``device``."""
    if method not in METHODS:
        raise QuantizationUnavailable(f"quantization {method!r} is not one of {', '.join(METHODS)}")
    on_gpu = str(device).startswith("cuda")
    if method == "none":
        return
    if method == "int8":
        if engine != "transformers" or on_gpu:
            raise QuantizationUnavailable(
                "int8 runs on a CPU with the transformers engine (AVCHAT_ENGINE=transformers, AVCHAT_DEVICE=cpu); "
                "on a GPU use fp8, awq or gptq with vLLM, or bnb-8bit with the transformers engine"
            )
        return
    if method in VLLM_METHODS:
        if engine != "vllm" or not on_gpu:
            raise QuantizationUnavailable(
                f"{method} is vLLM's, on a GPU (AVCHAT_ENGINE=vllm, AVCHAT_DEVICE=cuda); "
                "on a CPU use int8 with the transformers engine"
            )
        if method in ("awq", "gptq"):
            found = _folder_method(llm_folder)
            if found != method:
                raise QuantizationUnavailable(
                    f"{method} needs an LLM folder quantized with {method.upper()} beforehand (its config.json's "
                    f"quantization_config.quant_method is {method!r}); {llm_folder or 'the LLM'} has "
                    f"{found or 'none'}. Quantize the exported llm/ with AutoAWQ or GPTQModel, or use fp8, "
                    "which quantizes at load"
                )
        return
    # bitsandbytes
    if engine != "transformers" or not on_gpu:
        raise QuantizationUnavailable(
            f"{method} is bitsandbytes', for the transformers engine on a GPU (AVCHAT_ENGINE=transformers, "
            "AVCHAT_DEVICE=cuda); with vLLM use fp8, awq or gptq; on a CPU use int8"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnavailable(f"{method} needs bitsandbytes: pip install bitsandbytes")


def _folder_method(folder: str | None) -> str | None:
    import json

    if not folder or not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    with open(os.path.join(folder, "config.json")) as f:
        qc = json.load(f).get("quantization_config") or {}
    return qc.get("quant_method")


def bnb_config(method: str):
    """transformers' ``BitsAndBytesConfig`` for ``bnb-8bit`` / ``bnb-4bit`` (NF4, bfloat16 compute)."""
    from transformers import BitsAndBytesConfig

    if method == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


# -- int8 on a CPU ---------------------------------------------------------------------------------


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output channel: ``weight`` (out, in)
    int8 and ``weight_scale`` (out,) in the compute dtype. Inputs of at most ``SHORT_ROWS`` rows
    (a generated token) go through PyTorch's int8 weight kernel, which reads the int8 weights
    directly; longer ones multiply with the weight dequantized to the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype)
        q.weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        q.weight_scale = scale.to(linear.weight.dtype)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return q.to(linear.weight.device)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows <= SHORT_ROWS and x.device.type == "cpu":
            flat = x.reshape(rows, self.in_features)
            if not flat.is_contiguous():
                flat = flat.contiguous()
            out = torch._weight_int8pack_mm(flat, self.weight, self.weight_scale.to(x.dtype))
            out = out.reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _tied(module: nn.Module) -> set[int]:
    """ids of output layers whose weight is the input embedding's (quantizing them would untie it)."""
    get_in = getattr(module, "get_input_embeddings", None)
    get_out = getattr(module, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return set()
    try:
        emb, out = get_in(), get_out()
    except (AttributeError, NotImplementedError):
        return set()
    if emb is not None and out is not None and getattr(out, "weight", None) is getattr(emb, "weight", 0):
        return {id(out)}
    return set()


def _replace(module: nn.Module, make) -> int:
    """Replaces every ``nn.Linear`` under ``module`` with ``make(linear)``, one at a time, holding
    only their names meanwhile, so that each float weight is freed as soon as it is replaced."""
    skip = _tied(module)
    names = [n for n, m in module.named_modules() if type(m) is nn.Linear and id(m) not in skip]
    del skip
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, make(getattr(parent, child)))
    return len(names)


def quantize_int8(model) -> int:
    """Quantizes the model's encoders and LLM in place; returns the number of layers."""
    count = 0
    for part in QUANTIZED_PARTS:
        with torch.no_grad():
            count += _replace(getattr(model, part), Int8Linear.from_linear)
    model.config.quantization = "int8"
    return count


def is_int8(module: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in module.modules())


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters created inside are put on the meta device (no memory), buffers are not: a
    model built inside gets its non-persistent buffers (positions, rotary frequencies) computed
    for real, and its weights from the file."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        original(self, name, param)
        if param is not None:
            kwargs = {"requires_grad": param.requires_grad}
            self._parameters[name] = type(param)(self._parameters[name].to("meta"), **kwargs)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def load_int8(build, folder: str | os.PathLike, dtype: torch.dtype | None) -> nn.Module:
    """A component saved quantized (by :func:`quantize_int8` then ``save_pretrained``): built
    with ``build()`` without allocating its weights, its linear layers swapped for
    :class:`Int8Linear`, then every tensor taken from the folder's safetensors as stored; no
    float copy of the weights is ever made and nothing is quantized again."""
    from safetensors.torch import load_file

    with _parameters_on_meta():
        module = build()
    _replace(module, lambda lin: Int8Linear(lin.in_features, lin.out_features, lin.bias is not None))
    state: dict[str, torch.Tensor] = {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no safetensors weights")
    for file in files:
        state.update(load_file(str(file)))
    missing = [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta and k not in state]
    if [k for k in missing if not _is_tied_key(module, k)]:
        raise ValueError(f"{folder}: not an int8 checkpoint of this model (no {missing[:3]})")
    if not any(v.dtype == torch.int8 for v in state.values()):
        raise ValueError(f"{folder}: its config says int8 but its weights are not")
    if dtype is not None:
        state = {k: v if v.dtype == torch.int8 or not v.is_floating_point() else v.to(dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=False, assign=True)
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    left = [n for n, p in module.named_parameters() if p.is_meta] + [n for n, b in module.named_buffers() if b.is_meta]
    if left:
        raise ValueError(f"{folder}: no weights for {left[:3]}")
    return module


def _is_tied_key(module: nn.Module, key: str) -> bool:
    out = getattr(module, "get_output_embeddings", lambda: None)()
    return out is not None and bool(_tied(module)) and key.endswith("weight") and "lm_head" in key
