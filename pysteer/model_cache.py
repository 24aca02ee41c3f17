"""GGUF models converted once into a cached Hugging Face directory.

Transformers parses a GGUF file three times per load (tokenizer, config, weights) and
de-quantises every tensor: about a minute for the default model on two cores. The
first load therefore writes what it parsed as an ordinary Hugging Face directory
(``model.safetensors``, ``config.json``, the tokenizer files), and every later load
reads that directory in seconds.

    <cache root>/models/<gguf stem>-<sha256 of the GGUF, 16 hex>/
        config.json  generation_config.json  model.safetensors  tokenizer.json  ...
        pysteer-cache.json       written last: the format, the source, each file's size and sha256
    <cache root>/models/<entry>.lock

The cache root is ``$PYSTEER_CACHE``, else the platform's user cache directory.

- An entry is valid only when its manifest exists and every file it lists has the
  recorded size and sha256; anything else (a build killed half-way, a truncated or
  altered file) is rebuilt, with a message saying why.
- Two processes loading at once do not corrupt it: the check and the build run under
  a file lock, a build is staged in a temporary directory next to the entry and
  renamed into place only after it was read back and compared with the GGUF load.
- The key is the GGUF's content, so the same file at another path shares the entry
  and a changed file gets a new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from .errors import PysteerError
from .fileio import current_umask, read_json_object, write_json_atomic

CACHE_ENV = "PYSTEER_CACHE"
CACHE_FORMAT = 1
MANIFEST = "pysteer-cache.json"
KEY_HEX = 16


class ModelCacheError(PysteerError):
    """The model cache cannot be written, or a freshly converted model does not read back."""


def cache_root() -> Path:
    """``$PYSTEER_CACHE``, else the platform's user cache directory for pysteer."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs is a dependency; keep working if a user removed it
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pysteer"
    return Path(user_cache_dir("pysteer", appauthor=False))


def file_sha256(path: "str | os.PathLike") -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def entry_for(gguf_path: "str | os.PathLike", root: "str | os.PathLike | None" = None) -> Path:
    """Where the converted copy of ``gguf_path`` lives (whether or not it exists yet)."""
    gguf_path = Path(gguf_path)
    root = Path(root) if root is not None else cache_root()
    return root / "models" / f"{gguf_path.stem}-{file_sha256(gguf_path)[:KEY_HEX]}"


def why_invalid(entry: Path, hashes: bool = True) -> Optional[str]:
    """None when ``entry`` is a complete converted copy; otherwise what is wrong with it.
    ``hashes=False`` checks only the manifest and the file sizes (free: catches a build that
    did not finish and truncated files, not altered bytes)."""
    if not entry.is_dir():
        return "absent"
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return f"{MANIFEST} is missing (a conversion did not finish)"
    try:
        manifest = read_json_object(manifest_path, ModelCacheError)
    except ModelCacheError as exc:
        return str(exc)
    files = manifest.get("files")
    if manifest.get("format") != CACHE_FORMAT or not isinstance(files, dict) or not files:
        return f"{manifest_path}: not a format-{CACHE_FORMAT} manifest"
    for name, recorded in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(recorded, dict) or path.stat().st_size != recorded.get("size"):
            return f"{name} has the wrong size"
    for name, recorded in files.items() if hashes else ():
        if file_sha256(entry / name) != recorded.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


class PendingEntry:
    """A cache entry handed out before its sha256 check finished: the check runs in a thread
    (hashlib releases the GIL) while the caller imports and parses what it can, and
    :meth:`verified` waits for it, rebuilding the entry if the check failed.

    ``rebuilt`` says whether :meth:`verified` had to rebuild: whatever was read from the
    entry before then must be read again.
    """

    def __init__(self, gguf_path: Optional[Path], entry: Path, convert: Optional[Callable[[Path, Path], None]],
                 check: "Optional[Future[Optional[str]]]") -> None:
        self.gguf_path, self.path, self._convert, self._check = gguf_path, entry, convert, check
        self.rebuilt = False

    @classmethod
    def ready(cls, directory: Path) -> "PendingEntry":
        """A directory that needs no check (a user's own Hugging Face directory)."""
        return cls(None, directory, None, None)

    def verified(self) -> Path:
        if self._check is not None:
            problem, self._check = self._check.result(), None
            if problem is not None:
                _ensure(self.gguf_path, self.path, self._convert, problem)
                self.rebuilt = True
        return self.path


def open_entry(gguf_path: "str | os.PathLike", convert: "Callable[[Path, Path], None] | None" = None,
               root: "str | os.PathLike | None" = None) -> PendingEntry:
    """The entry for ``gguf_path``, converting it first if it is absent or visibly incomplete;
    its sha256 check is left running (see :class:`PendingEntry`)."""
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    convert = convert or convert_gguf
    entry = entry_for(gguf_path, root)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelCacheError(f"cannot create the model cache at {entry.parent} ({exc}); set "
                              f"{CACHE_ENV} to a writable directory") from None
    with _lock(entry):
        problem = why_invalid(entry, hashes=False)
        if problem is not None:
            _rebuild(gguf_path, entry, convert, problem)
            return PendingEntry(gguf_path, entry, convert, None)  # just built: checked as it was made
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pysteer-cache-check")
    check = executor.submit(why_invalid, entry)
    executor.shutdown(wait=False)
    return PendingEntry(gguf_path, entry, convert, check)


def converted_model_dir(gguf_path: "str | os.PathLike",
                        convert: "Callable[[Path, Path], None] | None" = None,
                        root: "str | os.PathLike | None" = None) -> Path:
    """The Hugging Face directory holding ``gguf_path`` converted, checked in full; converts
    it on first use. ``convert(gguf_path, out_dir)`` writes the directory (default:
    :func:`convert_gguf`)."""
    return open_entry(gguf_path, convert, root).verified()


def _lock(entry: Path):
    from filelock import FileLock

    return FileLock(str(entry) + ".lock")


def _ensure(gguf_path: Path, entry: Path, convert: Callable[[Path, Path], None], problem: str) -> None:
    """After a failed check outside the lock: check again under it (another process may have
    rebuilt the entry meanwhile) and rebuild if it is still bad."""
    with _lock(entry):
        if why_invalid(entry) is not None:
            _rebuild(gguf_path, entry, convert, problem)


def _rebuild(gguf_path: Path, entry: Path, convert: Callable[[Path, Path], None], problem: str) -> None:
    if problem != "absent":
        _note(f"the cached copy {entry} is incomplete or corrupted ({problem}); rebuilding it")
    _build(gguf_path, entry, convert)


def _build(gguf_path: Path, entry: Path, convert: Callable[[Path, Path], None]) -> None:
    _note(f"converting {gguf_path.name} into a Hugging Face directory in {entry.parent} "
          f"(first load only; later loads read it in seconds)")
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".building", dir=entry.parent))
    try:
        convert(gguf_path, staging)
        files = {path.name: {"size": path.stat().st_size, "sha256": file_sha256(path)}
                 for path in sorted(staging.iterdir()) if path.is_file()}
        write_json_atomic(staging / MANIFEST, {"format": CACHE_FORMAT, "source": str(gguf_path),
                                              "source_sha256": file_sha256(gguf_path),
                                              "files": files})
        if entry.exists():  # invalid (checked under the lock): move it aside, then delete it
            condemned = entry.with_name(f".{entry.name}.{os.getpid()}.invalid")
            os.replace(entry, condemned)
            shutil.rmtree(condemned, ignore_errors=True)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; it is an ordinary cache
        os.replace(staging, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _note(f"converted in {time.perf_counter() - start:.0f} s: {entry}")


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers, save it as safetensors + config + tokenizer, and
    check that the saved copy reads back to the same tensors and the same tokenization."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # Transformers de-quantises GGUF tensors as it loads them; the model holds plain float32
    # weights and only the quantizer's bookkeeping says "gguf", which save_pretrained refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, local_files_only=True)
    expected, got = model.state_dict(), saved.state_dict()
    differing = [name for name in expected if name not in got or not torch.equal(expected[name], got[name])]
    if differing or set(got) != set(expected):
        raise ModelCacheError(f"{gguf_path.name}: the converted copy differs from the GGUF load in "
                              f"{(differing or sorted(set(got) ^ set(expected)))[:3]}; not caching it")
    reloaded = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    probe = [{"role": "user", "content": "Name three colours, then say hello in French: ¿ça va? 123"}]
    if (getattr(tokenizer, "chat_template", None)
            and reloaded.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            != tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)):
        raise ModelCacheError(f"{gguf_path.name}: the saved tokenizer's chat template differs")
    text = tokenizer.apply_chat_template(probe, tokenize=False) if tokenizer.chat_template else "hello"
    if reloaded(text)["input_ids"] != tokenizer(text)["input_ids"]:
        raise ModelCacheError(f"{gguf_path.name}: the saved tokenizer encodes differently")


def _note(message: str) -> None:
    """Progress on stderr: a minute-long first load should not look like a hang."""
    print(f"pysteer: {message}", file=sys.stderr, flush=True)

