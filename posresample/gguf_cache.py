"""Models from a GGUF file: named by the file's sha256, converted once to a safetensors folder.

`--model FILE.gguf` becomes the reference `gguf:sha256:HEX` everywhere it is recorded (scans,
generation params, probe sidecars), so a worker on another host with the same file, under any path
or name, serves the same jobs. transformers dequantizes a GGUF to float32 on every load, and
builds its tokenizer from the file's vocabulary, both slowly; the first load therefore writes a
plain safetensors folder under the cache, keyed by that sha256, and later loads read that.
Concurrent first loads (several workers) take a file lock: one converts, into a temporary folder
renamed into place when complete, and the others wait and then read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid

from .errors import ModelError

log = logging.getLogger(__name__)
REF_PREFIX = "gguf:sha256:"
CACHE_ENV_VAR = "POSRESAMPLE_CACHE"  # where converted models live (default ~/.cache/posresample)
MARKER = "posresample-gguf.json"  # written last into a converted folder: its presence means complete
GGUF_MAGIC = b"GGUF"
EXTRA_HINT = "pip install 'posresample[gguf]' (gguf and accelerate)"
_paths: dict[str, str] = {}  # ref -> a GGUF file this process was given for it (to convert from)
_hashes: dict[tuple, str] = {}  # (path, size, mtime) -> sha256, so a file is hashed once per process


def is_gguf_path(name: str) -> bool:
    return name.lower().endswith(".gguf")


def is_ref(name: str) -> bool:
    return name.startswith(REF_PREFIX)


def cache_root() -> str:
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "posresample")
    return os.path.join(os.environ.get(CACHE_ENV_VAR) or default, "gguf")


def folder_for(ref: str) -> str:
    return os.path.join(cache_root(), ref.removeprefix(REF_PREFIX))


def ref_for(path: str) -> str:
    """The reference of a GGUF file (its sha256), after checking it is one; remembered for conversion."""
    if not os.path.isfile(path):
        raise ModelError(f"cannot load model {path}: no such GGUF file")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"cannot load model {path}: not a GGUF file (it does not start with 'GGUF')")
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    ref = REF_PREFIX + _hashes[key]
    _paths[ref] = os.path.abspath(path)
    return ref


def converted_folder(ref: str) -> str:
    """The safetensors folder of `ref`, converting the GGUF file this process was given when missing."""
    folder = folder_for(ref)
    if os.path.isfile(os.path.join(folder, MARKER)):
        return folder
    source = _paths.get(ref)
    if source is None:
        raise ModelError(
            f"cannot load model {ref}: it is not converted on this host ({cache_root()}); "
            "pass --model with the same .gguf file"
        )
    _check_extra()
    from filelock import FileLock

    os.makedirs(cache_root(), exist_ok=True)
    with FileLock(folder + ".lock"):
        if not os.path.isfile(os.path.join(folder, MARKER)):  # another process may have finished meanwhile
            _convert(source, ref, folder)
    return folder


def _check_extra() -> None:
    missing = [name for name in ("gguf", "accelerate") if not _importable(name)]
    if missing:
        raise ModelError(f"loading a .gguf model needs {' and '.join(missing)}: {EXTRA_HINT}")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _convert(source: str, ref: str, folder: str) -> None:
    """Dequantize with transformers' GGUF loader, save plain safetensors and the tokenizer into a
    temporary folder, then rename it into place: a reader never sees a half-written folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once per file; later loads take seconds)", source, folder)
    directory, name = os.path.split(source)
    tmp = f"{folder}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _check_readable(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        except Exception as exc:  # transformers raises ValueError, KeyError, OSError, RuntimeError ... for bad files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"cannot load model {source}: {first}") from None
        config = loaded.config
        if hasattr(config, "quantization_config"):  # a GGUF-quantized model refuses save_pretrained
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as handle:
            json.dump({"source": source, "ref": ref, "bytes": os.path.getsize(source)}, handle)
        os.replace(tmp, folder) if not os.path.exists(folder) else _replace_incomplete(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_readable(source: str) -> None:
    """gguf's own reader walks the header and tensor table: a cut file fails here in one line."""
    from gguf import GGUFReader

    try:
        GGUFReader(source)
    except Exception as exc:  # struct.error, ValueError, IndexError ... from a cut or corrupt header
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"cannot load model {source}: a truncated or corrupt GGUF file ({first})") from None


def _replace_incomplete(tmp: str, folder: str) -> None:
    """A folder without the marker is the remains of a killed conversion (under the lock, so no
    process is writing it): swap it out."""
    stale = f"{folder}.stale-{uuid.uuid4().hex[:8]}"
    os.replace(folder, stale)
    os.replace(tmp, folder)
    shutil.rmtree(stale, ignore_errors=True)


def register(path: str) -> str:
    """A .gguf given to a command that loads its model from the database (worker, label, distill):
    hashed, and converted now, before any process starts, so a bad file is one line."""
    if not is_gguf_path(path):
        raise ModelError(f"--model {path}: expected a .gguf file (other models are named by the scan)")
    ref = ref_for(path)
    converted_folder(ref)
    return ref
