"""Reading and writing users' files safely: one place for the rules every module follows.

- A JSON file that cannot be read is an error naming the file, in the caller's error class.
- Nothing the user saved is half-overwritten: files are written to a temporary name in
  the same directory and renamed into place; directories are staged the same way.
- Nothing the user saved is deleted: overwriting a directory replaces only the names its
  writer owns, and a directory holding anything else is refused, naming what it holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator, Optional


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
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes files private; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: "str | os.PathLike", doc: Any, **dump_kwargs: Any) -> None:
    write_text_atomic(path, json.dumps(doc, **{"indent": 1, **dump_kwargs}))


def check_replaceable(path: "str | os.PathLike", overwrite: bool,
                      owns: Optional[Collection[str]] = None) -> None:
    """Raise FileExistsError unless a writer owning the names ``owns`` may write ``path``.

    ``path`` may be written when it is absent or an empty directory; with ``overwrite``
    also when it is a directory holding only owned names (entries directly under it).
    ``owns=None`` leaves the names to the caller (see :func:`staged_directory`). Call it
    before long work so that a refusal comes first.
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory this writer made; remove it "
                              f"yourself or choose another path")
    if owns is None:
        return
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in owns)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(f"{path} also holds {shown}, which this save does not write; "
                              f"overwrite=True replaces only {', '.join(sorted(owns))}, so move "
                              f"the other files away or choose another directory")


@contextlib.contextmanager
def staged_directory(path: "str | os.PathLike", overwrite: bool = False,
                     owns: Optional[Collection[str]] = None) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` only if the block succeeds.

    ``owns``: the names (entries directly under ``path``) the writer makes, and so may
    replace. An existing non-empty ``path`` is refused unless ``overwrite``, and even
    then if it holds any other name (:func:`check_replaceable`) — before the block runs,
    and again before anything is replaced, in case files appeared meanwhile. Without
    ``owns`` the names the block wrote are the owned ones, checked only when it ends.
    On any error the staging directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    check_replaceable(path, overwrite, owns)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # mkdtemp makes the directory private (0o700); the result should get the mode any
        # directory the user creates gets.
        staging.chmod(0o777 & ~current_umask())
        yield staging
        written = {entry.name for entry in staging.iterdir()}
        if owns is not None and not written <= set(owns):
            raise RuntimeError(f"writing {path}: wrote {sorted(written - set(owns))}, which it does "
                               f"not own ({sorted(owns)}); a later overwrite would refuse them")
        check_replaceable(path, overwrite, written if owns is None else owns)
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; an existing ``path`` (checked replaceable) is moved
    aside first and put back if the rename fails, then deleted."""
    if not path.exists():
        staging.rename(path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.replaced.", dir=path.parent))
    old = aside / path.name
    try:
        path.rename(old)
        staging.rename(path)
    except BaseException:
        if old.exists() and not path.exists():
            old.rename(path)
        with contextlib.suppress(OSError):
            aside.rmdir()  # only once empty: it may still hold the user's directory
        raise
    shutil.rmtree(aside, ignore_errors=True)


def save_tensors(path: "str | os.PathLike", tensors: dict) -> None:
    """``safetensors.torch.save_file``, with the mode any file the user writes gets
    (safetensors creates its files private, 0o600)."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage (two interventions made from one SAE
    # hold views of the same bias); each name gets its own copy of a shared buffer.
    storages: dict[int, int] = {}
    for tensor in tensors.values():
        storages[tensor.untyped_storage().data_ptr()] = storages.get(tensor.untyped_storage().data_ptr(), 0) + 1
    owned = {name: tensor.clone() if storages[tensor.untyped_storage().data_ptr()] > 1 else tensor
             for name, tensor in tensors.items()}
    save_file(owned, str(path))
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
