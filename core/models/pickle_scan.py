"""The tensor names, dtypes and shapes of a PyTorch checkpoint (.ckpt / .pt / .pth / .bin) without torch and
without running its pickle.

A checkpoint is a pickle, and a pickle can call any Python function while it is read (`os.system`, ...).
The model library must list such files without trusting them, so the pickle is read by a restricted
Unpickler: the few names a state dict is made of (torch's tensor-rebuild functions, storage types and
dtypes, OrderedDict) are answered with harmless stand-ins that only record dtype and shape, and any other
name is refused (UnsafePickle: "pickle imports posix.system: not loaded"). The tensor data (the zip's
`data/N` entries) is never read.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

PICKLE_LIMIT = 64 * 2**20  # a state dict's pickle holds names and shapes only: a few MB at most
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch's pre-1.6 (non-zip) format
MAX_NESTING = 4  # how deep a checkpoint's dicts are followed for tensors ({"state_dict": {...}})

# torch's storage classes and dtypes -> the safetensors dtype names (what the rest of the library speaks)
STORAGE_DTYPES = {"DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
                  "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
                  "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64",
                  "ComplexDoubleStorage": "C128"}
TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32",
                "uint64": "U64", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
                "float8_e4m3fnuz": "F8_E4M3", "float8_e5m2fnuz": "F8_E5M2"}


class TensorInfo(NamedTuple):
    """What the library knows of a tensor: its dtype (safetensors' names: F16, BF16, F32, ...) and shape."""
    dtype: str
    shape: tuple


class UnsafePickle(ValueError):
    """The pickle names a Python object that is not part of a state dict; it was not loaded."""


class NotACheckpoint(ValueError):
    """Neither a zip file nor a pickle: not a PyTorch checkpoint at all."""


class _Storage(NamedTuple):
    dtype: str | None  # None for an UntypedStorage: the dtype then comes with _rebuild_tensor_v3


def _rebuild_tensor_v2(storage, _offset, size, *_rest):
    return TensorInfo(storage.dtype or "?", tuple(size))


def _rebuild_tensor_v3(storage, _offset, size, _stride, _requires_grad, _hooks, dtype, *_rest):
    return TensorInfo(dtype if isinstance(dtype, str) else storage.dtype or "?", tuple(size))


def _rebuild_parameter(data, *_rest):
    return data


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol 2 pickles bytes (`_codecs.encode(str, "latin1")`); other codecs are refused."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickle(f"pickle imports _codecs.encode with {encoding!r}: not loaded")
    return text.encode("latin1")


ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
           ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
           ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
           ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
           ("torch.storage", "UntypedStorage"): _Storage(None),
           ("torch", "Size"): tuple,
           ("collections", "OrderedDict"): collections.OrderedDict,
           ("_codecs", "encode"): _codecs_encode,
           **{("torch", name): _Storage(dtype) for name, dtype in STORAGE_DTYPES.items()},
           **{("torch", name): dtype for name, dtype in TORCH_DTYPES.items()}}


class _StateDictUnpickler(pickle.Unpickler):
    """Answers the names in ALLOWED with their stand-ins and refuses every other one."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"pickle imports {module}.{name}: not loaded") from None

    def persistent_load(self, pid):
        """torch's storage reference ('storage', storage type, key, location, numel[, view]): the dtype only."""
        if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "storage" and isinstance(pid[1], _Storage):
            return pid[1]
        raise pickle.UnpicklingError(f"unexpected storage reference {pid!r:.80}")


def _unpickle(data) -> object:
    return _StateDictUnpickler(data if hasattr(data, "read") else io.BytesIO(data)).load()


def _zip_pickle(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = [info for info in archive.infolist() if info.filename.rsplit("/", 1)[-1] == "data.pkl"]
        if not names:
            raise ValueError("a zip file without data.pkl, not a PyTorch checkpoint")
        if names[0].file_size > PICKLE_LIMIT:
            raise ValueError(f"its data.pkl takes {names[0].file_size} bytes, more than a state dict's")
        return _unpickle(archive.read(names[0]))


def _legacy_pickle(path: Path) -> object:
    """torch's pre-1.6 format: magic number, protocol version and system info pickles, then the object."""
    with open(path, "rb") as f:
        if _unpickle(f) != LEGACY_MAGIC:
            raise ValueError("a pickle, but not a PyTorch checkpoint")
        _unpickle(f), _unpickle(f)
        return _unpickle(f)


def _tensors(obj, prefix: str = "", depth: int = 0) -> dict[str, TensorInfo]:
    """The tensors of an unpickled checkpoint by dotted key (a nested dict's keys joined with ".")."""
    found = {}
    if isinstance(obj, dict) and depth <= MAX_NESTING:
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, TensorInfo):
                found[name] = value
            elif isinstance(value, dict):
                found.update(_tensors(value, f"{name}.", depth + 1))
    return found


def pickle_tensors(path: str | Path) -> dict[str, TensorInfo]:
    """{key: TensorInfo} of a PyTorch checkpoint, read without running it. A checkpoint's `state_dict` is
    its tensors (Lightning and the original SD checkpoints keep them there). UnsafePickle when the pickle
    names anything besides a state dict's parts, NotACheckpoint when the file is no pickle at all, ValueError
    with the reason when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            start = f.read(4)
        if not start:
            raise ValueError("an empty file")
        if start.startswith(b"PK"):
            obj = _zip_pickle(path)
        elif start[:1] == b"\x80":  # the PROTO opcode that begins a binary pickle
            obj = _legacy_pickle(path)
        else:
            raise NotACheckpoint("not a PyTorch checkpoint (neither a zip file nor a pickle)")
    except (UnsafePickle, NotACheckpoint):
        raise
    except zipfile.BadZipFile as exc:
        raise ValueError(f"a damaged or truncated zip file ({exc})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:  # a malformed pickle raises anything (TypeError, IndexError, ...): report it
        raise ValueError(f"cannot read its pickle ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    return _tensors(obj)
