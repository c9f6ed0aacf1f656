"""Loading the user's model and weights for ``occlens explain``, without unpickling code.

A model is named as ``package.module:factory`` (a callable returning the model, or a module
instance), or given as a TorchScript archive or a ``torch.export`` ExportedProgram (``.pt2``).
Weights are a safetensors file or a torch file read with ``torch.load(weights_only=True)``: a file
that holds pickled Python objects beyond tensors is refused, never executed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ._errors import OcclensError, close_matches, describe

__all__ = ["LoadedModel", "load_model", "load_weights"]

CALL = "occlens explain"
EXPORTED_SUFFIXES = (".pt2",)
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ts", ".jit", ".torchscript", ".zip")


def _error(argument: str, problem: str, fix: str) -> OcclensError:
    return OcclensError(f"{CALL}({argument}): {problem}; {fix}.")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class LoadedModel:
    """The model ready to run; `kind` is ``"factory"``, ``"torchscript"`` or ``"exported"``."""

    model: Callable[[Tensor], Tensor]
    kind: str
    source: str


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    """Force every ``torch.load`` inside to ``weights_only=True`` (torch.export.load falls back to
    full unpickling for some payloads)."""
    name = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _is_torchscript_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _pickled_code(error: BaseException) -> str | None:
    """The forbidden global (a callable or class) named by a weights-only unpickling error."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def _unpickler_reason(error: BaseException) -> str:
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+(?:\n\n[^\n]+)?)", str(error))
    return " ".join(found.group(1).split()) if found else _first_line(error)


def _refuse_pickle(argument: str, path: Path, what: str) -> OcclensError:
    return _error(
        argument,
        f"'{path}' holds pickled Python code ({what}), not only tensors, and occlens never "
        "unpickles code",
        "save only the tensors, e.g. safetensors.torch.save_file(model.state_dict(), "
        "'weights.safetensors') or torch.save(model.state_dict(), 'weights.pt')",
    )


def _torch_load(path: Path, argument: str) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:
        culprit = _pickled_code(error)
        if culprit is not None:
            raise _refuse_pickle(argument, path, culprit) from None
        if isinstance(error, pickle.UnpicklingError):
            error = RuntimeError(_unpickler_reason(error))
        raise _error(
            argument,
            f"cannot read '{path}' as a torch or safetensors file ({_first_line(error)})",
            "pass a .safetensors file or a state dict saved with torch.save",
        ) from None


def _state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, dict) and not all(isinstance(v, Tensor) for v in loaded.values()):
        for key in ("state_dict", "model_state_dict", "model", "weights"):  # common checkpoints
            inner = loaded.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, Tensor) for v in inner.values())
            ):
                return dict(inner)
    if (
        not isinstance(loaded, dict)
        or not loaded
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())
    ):
        kinds = (
            sorted({type(v).__name__ for v in loaded.values()})
            if isinstance(loaded, dict)
            else [type(loaded).__name__]
        )
        raise _error(
            "--weights",
            f"'{path}' holds {', '.join(kinds)}, not a state dict of named tensors",
            "save model.state_dict() (a dict of name -> tensor)",
        )
    return dict(loaded)


def load_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a safetensors file or a weights-only torch file.

    Checkpoints that wrap the state dict as ``{"state_dict": ...}`` (or ``"model"``,
    ``"model_state_dict"``, ``"weights"``) are unwrapped. Pickled code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise _error(
            "--weights", f"no such file: '{path}'", f"check the path (cwd is '{Path.cwd()}')"
        )
    with path.open("rb") as file:
        head = file.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            if path.suffix == ".safetensors":
                raise _error(
                    "--weights",
                    f"'{path}' is not a readable safetensors file ({_first_line(error)})",
                    "write it with safetensors.torch.save_file(model.state_dict(), path)",
                ) from None
    if _is_torchscript_zip(path):
        raise _error(
            "--weights",
            f"'{path}' is a TorchScript archive, not a state dict",
            "pass it as the model instead (occlens explain FILE.pt IMAGE), without --weights",
        )
    return _state_dict(_torch_load(path, "--weights"), path)


def _import(spec: str) -> object:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or not re.fullmatch(r"[\w.]+", module_name):
        raise _error(
            "model",
            f"{spec!r} is neither a model file nor 'package.module:factory' (no such file, and no "
            "factory after a colon)",
            "name a factory as package.module:function (or a module instance), or pass a "
            "TorchScript or .pt2 file",
        )
    added = str(Path.cwd())
    sys.path.insert(0, added)  # like `python -m`: modules next to the user are importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise _error(
            "model",
            f"cannot import {module_name!r} ({type(error).__name__}: {_first_line(error)})",
            "check the module path, and run from the folder that holds it or install it",
        ) from None
    except Exception as error:  # the user's module failed while importing
        raise _error(
            "model",
            f"importing {module_name!r} raised {type(error).__name__}: {_first_line(error)}",
            "fix the module so that it imports",
        ) from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(added)
    obj: object = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attribute.split(".")[:i]])
            options = [n for n in dir(obj) if not n.startswith("_")]
            raise _error(
                "model",
                f"{where!r} has no attribute {part!r} (close matches: "
                f"{close_matches(part, options)})",
                "name a function that returns the model, as package.module:function",
            )
        obj = getattr(obj, part)
    return obj


def _build(spec: str, kwargs: dict[str, object]) -> Callable[[Tensor], Tensor]:
    obj = _import(spec)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise _error("--model-kwargs", f"{spec} is a module instance", "drop --model-kwargs")
        return obj
    if not callable(obj):
        raise _error("model", f"{spec} is {describe(obj)}", "name a function returning the model")
    try:
        model = obj(**kwargs)
    except Exception as error:
        raise _error(
            "model",
            f"calling {spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) raised "
            f"{type(error).__name__}: {_first_line(error)}",
            "pass the factory's arguments with --model-kwargs '{\"name\": value}'",
        ) from None
    if not callable(model) or isinstance(model, type):
        raise _error(
            "model",
            f"{spec}() returned {describe(model)}, not a model",
            "name a function (or class) whose call returns an nn.Module",
        )
    return model


def _model_file(path: Path) -> tuple[Callable[[Tensor], Tensor], str]:
    if path.suffix in EXPORTED_SUFFIXES:
        try:
            with _weights_only_everywhere():
                program = torch.export.load(path)
        except Exception as error:
            culprit = _pickled_code(error)
            if culprit is not None:
                raise _refuse_pickle("model", path, culprit) from None
            raise _error(
                "model",
                f"cannot load '{path}' as a torch.export ExportedProgram "
                f"({type(error).__name__}: {_first_line(error)})",
                "save it with torch.export.save(torch.export.export(model, args), 'model.pt2')",
            ) from None
        return program.module(), "exported"
    if not _is_torchscript_zip(path):
        raise _error(
            "model",
            f"'{path}' is not a TorchScript archive (a state dict or a pickled model?)",
            "pass the model as package.module:factory and this file with --weights, or save a "
            "TorchScript model with torch.jit.save(torch.jit.script(model), path)",
        )
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but its files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu"), "torchscript"
    except Exception as error:
        raise _error(
            "model",
            f"cannot load '{path}' as TorchScript ({type(error).__name__}: {_first_line(error)})",
            "save it with torch.jit.save(torch.jit.script(model), path)",
        ) from None


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.endswith(MODEL_FILE_SUFFIXES)


def parse_kwargs(text: str | None) -> dict[str, object]:
    """The factory's keyword arguments from a JSON object."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _error(
            "--model-kwargs", f"{text!r} is not JSON ({error.msg})", "pass a JSON object"
        ) from None
    if not isinstance(value, dict):
        raise _error("--model-kwargs", f"got {describe(value)}", "pass a JSON object {...}")
    return value


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    kwargs: dict[str, object] | None = None,
    device: torch.device | None = None,
) -> LoadedModel:
    """Build or load the model named by `spec`, load `weights`, put it in eval mode on `device`."""
    path = Path(spec)
    if path.is_file():
        model, kind = _model_file(path)
        if kwargs:
            raise _error("--model-kwargs", "a model file takes no arguments", "drop --model-kwargs")
    elif _looks_like_path(spec):
        raise _error("model", f"no such file: '{spec}'", f"check the path (cwd is '{Path.cwd()}')")
    else:
        model, kind = _build(spec, kwargs or {}), "factory"
    if weights is not None:
        state = load_weights(weights)
        if not isinstance(model, nn.Module):
            raise _error("--weights", f"{spec} gave {describe(model)}", "load weights yourself")
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise _error(
                "--weights",
                f"the weights do not fit {type(model).__name__} ({_summary(model, state, error)})",
                "pass the state dict saved from this architecture",
            ) from None
    if isinstance(model, nn.Module):
        with contextlib.suppress(NotImplementedError):  # ExportedPrograms have a fixed mode
            model.eval()
        if device is not None:
            model.to(device)
    return LoadedModel(model, kind, spec)


def _summary(model: nn.Module, state: dict[str, Tensor], error: BaseException) -> str:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    shapes = [
        f"{k}: {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        parts.append(f"shape mismatch {shapes[:2]}")
    return "; ".join(parts) or _first_line(error)
