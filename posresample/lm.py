"""Load the causal LM and tokenizer, and read one layer's residual stream without running the rest."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re

import torch

from .errors import ModelError

log = logging.getLogger(__name__)


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.isdigit():
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device} requested but CUDA is not available")
    return dev


def attention_implementation(model_type: str, requested: str = "auto") -> str:
    """Gemma 2 soft-caps attention scores; eager keeps the cap on every transformers version."""
    if requested != "auto":
        return requested
    return "eager" if model_type.startswith("gemma2") else "sdpa"


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")  # namespace/repo_name, as the Hub allows


def model_ref(name: str) -> str:
    """What a model is recorded as: a .gguf file becomes `gguf:sha256:HEX` (the file, wherever it
    lies); a folder or Hub id stays as given."""
    from . import gguf_cache

    return gguf_cache.ref_for(name) if gguf_cache.is_gguf_path(name) else name


def model_source(name: str) -> str:
    """Where transformers loads `name` from: a GGUF file or reference -> its converted folder."""
    from . import gguf_cache

    if gguf_cache.is_gguf_path(name):
        name = gguf_cache.ref_for(name)
    return gguf_cache.converted_folder(name) if gguf_cache.is_ref(name) else name


def check_model_name(name: str) -> None:
    """A name that is neither a folder here nor a Hub id gets one clear line (transformers would
    complain about repo id syntax for /no/such/folder)."""
    if os.path.isdir(name):
        return
    if os.path.exists(name):
        raise ModelError(f"cannot load model: {name} is a file, not a model folder")
    if not HUB_ID.match(name) or name.startswith((".", "~")):
        raise ModelError(f"cannot load model: no model folder at {name}, and not a Hub id")


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a missing, partial or corrupt checkpoint raises: OSError/ValueError from transformers,
    SafetensorError from a truncated .safetensors, RuntimeError from torch's loaders."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # an old safetensors without the public name
        return (OSError, ValueError, RuntimeError, EnvironmentError)
    return (OSError, ValueError, RuntimeError, SafetensorError)


def load_tokenizer(name: str):
    source = model_source(name)
    check_model_name(source)  # before importing transformers: a missing folder is told in one line, at once
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer {name}: {str(exc).splitlines()[0]}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"tokenizer {name} is not a fast tokenizer; offsets are needed for alignment")
    return tokenizer


def load_model(name: str, device: torch.device, attn: str = "auto", dtype: torch.dtype | None = None):
    """In `dtype` (default: bf16 on GPU, float32 on CPU); eval mode; no gradients."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(name)
    check_model_name(source)
    try:
        config = AutoConfig.from_pretrained(source)
        dtype = dtype or default_dtype(device)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation=attention_implementation(config.model_type, attn)
        )
    except _load_errors() as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load model {name}: {first}") from None
    model.to(device).eval().requires_grad_(False)
    return model


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU, float32 on CPU: the dtype activations (and so probe decisions) are computed in."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sampling_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is the device's default dtype; the others name a torch dtype."""
    return default_dtype(device) if name == "auto" else getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_dtype(model) -> str:
    return dtype_name(next(model.parameters()).dtype)


def silence_library_progress() -> None:
    """--no-progress: transformers' and huggingface_hub's own bars ("Loading weights") too."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # very old huggingface_hub
        return
    disable_progress_bars()


def num_layers(model) -> int:
    return model.config.num_hidden_layers


def check_layer(model, layer: int) -> None:
    n = num_layers(model)
    if not 0 <= layer <= n:
        raise ModelError(f"--layer {layer} is out of range: the model has hidden_states[0..{n}]")


def cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); pass whichever the model takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids [B, T], attention mask [B, T]), padded on `side` (right to scan, left to generate)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def _layer_stack(model):
    """The stack of transformer layers (Gemma2Model inside Gemma2ForCausalLM)."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@contextlib.contextmanager
def _first_layers(model, layer: int):
    """Temporarily keep only the first `layer` decoder layers, capturing the last one's output."""
    base = _layer_stack(model)
    layers = base.layers
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = layers[layer - 1].register_forward_hook(hook)
    base.layers = torch.nn.ModuleList(list(layers)[:layer])
    try:
        yield captured
    finally:
        base.layers = layers
        handle.remove()


@torch.inference_mode()
def layer_activations(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """hidden_states[layer] for a right-padded batch: [B, T, D]. Runs only the first `layer` layers."""
    if 0 < layer < num_layers(model):
        with _first_layers(model, layer) as captured:
            _layer_stack(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return captured["h"]
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[layer]
