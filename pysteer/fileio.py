"""Reading and writing users' files safely: one place for the rules every module follows.

- A JSON file that cannot be read is an error naming the file, in the caller's error class.
- Nothing the user saved is half-overwritten: files are written to a temporary name in
  the same directory and renamed into place; directories are staged the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def read_json_object(path: "str | os.PathLike", error: type[Exception]) -> dict:
    """The JSON object stored at ``path``; ``error(message naming the file)`` otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def write_text_atomic(path: "str | os.PathLike", text: str) -> None:
    """Write ``text`` to ``path``: temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: "str | os.PathLike", doc: Any, **dump_kwargs: Any) -> None:
    write_text_atomic(path, json.dumps(doc, **{"indent": 1, **dump_kwargs}))


@contextlib.contextmanager
def staged_directory(path: "str | os.PathLike", overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    An existing non-empty ``path`` is refused unless ``overwrite``; on any error the
    staging directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # mkdtemp makes the directory private (0o700); the result should get the mode any
        # directory the user creates gets.
        staging.chmod(0o777 & ~_umask())
        yield staging
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_tensors(path: "str | os.PathLike", tensors: dict) -> None:
    """``safetensors.torch.save_file``, with the mode any file the user writes gets
    (safetensors creates its files private, 0o600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
