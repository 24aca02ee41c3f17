"""The GGUF → Hugging Face directory cache: built once, checked on every load, rebuilt when
partial or corrupted, safe under concurrent loads. A stand-in converter keeps these fast;
the real conversion of the default model is checked where the session loads it."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from pysteer import model_cache
from pysteer.model_cache import MANIFEST, converted_model_dir, entry_for, why_invalid
from pysteer.models import DEFAULT_MODEL, model_directory, model_name


def fake_gguf(directory: Path, name: str = "tiny.gguf", content: bytes = b"GGUF tiny model") -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


class CountingConverter:
    """Writes a small directory and counts its calls in a file (works across processes)."""

    def __init__(self, counter: Path, delay_s: float = 0.0):
        self.counter, self.delay_s = counter, delay_s

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        import time

        with open(self.counter, "a") as handle:
            handle.write("x")
        time.sleep(self.delay_s)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out_dir / "model.safetensors").write_bytes(gguf_path.read_bytes() * 64)

    @property
    def calls(self) -> int:
        return len(self.counter.read_text()) if self.counter.exists() else 0


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.CACHE_ENV, str(root))
    return root


def test_first_load_converts_and_later_loads_reuse(tmp_path, cache, capsys):
    gguf = fake_gguf(tmp_path)
    convert = CountingConverter(tmp_path / "calls")
    entry = converted_model_dir(gguf, convert)
    assert entry.parent == cache / "models" and entry.name.startswith("tiny-")
    assert "converting tiny.gguf" in capsys.readouterr().err
    assert why_invalid(entry) is None
    manifest = json.loads((entry / MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "model.safetensors"}
    assert converted_model_dir(gguf, convert) == entry
    assert convert.calls == 1
    assert capsys.readouterr().err == ""  # a cached load says nothing
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".building")]


def test_the_key_is_the_content_not_the_path(tmp_path, cache):
    first = fake_gguf(tmp_path, content=b"one")
    (tmp_path / "elsewhere").mkdir()
    same = fake_gguf(tmp_path / "elsewhere", content=b"one")
    other = fake_gguf(tmp_path / "elsewhere", name="tiny2.gguf", content=b"two")
    assert entry_for(first) == entry_for(same)
    assert entry_for(other).name.split("-")[-1] != entry_for(first).name.split("-")[-1]


@pytest.mark.parametrize("damage", ["flip_a_byte", "truncate", "delete_file", "delete_manifest",
                                    "garble_manifest"])
def test_a_corrupted_or_partial_entry_is_rebuilt_with_a_message(tmp_path, cache, capsys, damage):
    gguf = fake_gguf(tmp_path)
    convert = CountingConverter(tmp_path / "calls")
    entry = converted_model_dir(gguf, convert)
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip_a_byte":
        data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[:10]))
    elif damage == "delete_file":
        weights.unlink()
    elif damage == "delete_manifest":
        (entry / MANIFEST).unlink()
    else:
        (entry / MANIFEST).write_text("{not json")
    capsys.readouterr()
    assert why_invalid(entry) is not None
    assert converted_model_dir(gguf, convert) == entry
    assert convert.calls == 2
    assert "rebuilding" in capsys.readouterr().err
    assert why_invalid(entry) is None and weights.read_bytes() == gguf.read_bytes() * 64


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, cache):
    gguf = fake_gguf(tmp_path)

    def broken(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        converted_model_dir(gguf, broken)
    models = cache / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def _load_in_child(gguf: str, counter: str, root: str, out: str) -> None:
    os.environ[model_cache.CACHE_ENV] = root
    entry = converted_model_dir(Path(gguf), CountingConverter(Path(counter), delay_s=1.0))
    Path(out).write_text(str(entry))


def test_concurrent_loads_convert_once_and_both_read_a_valid_entry(tmp_path, cache):
    gguf = fake_gguf(tmp_path)
    counter = tmp_path / "calls"
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_load_in_child,
                                args=(str(gguf), str(counter), str(cache), str(tmp_path / f"out{i}")))
                for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    entries = {(tmp_path / f"out{i}").read_text() for i in range(2)}
    assert len(entries) == 1
    assert why_invalid(Path(entries.pop())) is None
    assert CountingConverter(counter).calls == 1


def test_model_directory_takes_a_directory_a_gguf_file_or_the_default(tmp_path, cache, monkeypatch):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    assert model_directory(hf_dir) == hf_dir
    gguf = fake_gguf(tmp_path)
    converted = []
    monkeypatch.setattr(model_cache, "convert_gguf", lambda g, out: (converted.append(g),
                                                                     (out / "config.json").write_text("{}")))
    entry = model_directory(gguf)
    assert converted == [gguf.resolve()] and entry.parent == cache / "models"
    assert model_name(gguf) == "tiny" and model_name(None) == DEFAULT_MODEL
    with pytest.raises(FileNotFoundError, match="not a local model directory or .gguf file"):
        model_directory(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="offline"):
        model_directory(tmp_path / "weights.bin")


def test_an_unwritable_cache_root_names_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(model_cache.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(model_cache.ModelCacheError, match=model_cache.CACHE_ENV):
        converted_model_dir(fake_gguf(tmp_path), CountingConverter(tmp_path / "calls"))


def test_the_default_model_loads_from_a_valid_cache_entry(smollm2):
    """The session's model came through the cache: its entry is complete, holds the weights
    as safetensors, and records the GGUF it was converted from (the conversion itself compared
    the saved tensors and tokenizer with the GGUF load before caching them)."""
    model, _tokenizer = smollm2
    entry = model_directory(None)
    assert why_invalid(entry) is None
    manifest = json.loads((entry / MANIFEST).read_text())
    assert "model.safetensors" in manifest["files"] and manifest["source"].endswith(".gguf")
    assert model.config.name_or_path == DEFAULT_MODEL


def test_a_pending_entry_rebuilds_when_its_background_check_fails(tmp_path, cache, capsys):
    """open_entry hands the directory out while the sha256 check runs; verified() waits for it
    and rebuilds when it fails, and says so through ``rebuilt``."""
    gguf = fake_gguf(tmp_path)
    convert = CountingConverter(tmp_path / "calls")
    model_cache.converted_model_dir(gguf, convert)
    pending = model_cache.open_entry(gguf, convert)
    assert pending.verified() == pending.path and not pending.rebuilt and convert.calls == 1
    weights = pending.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01  # same size: the quick check passes, only the hash can tell
    weights.write_bytes(bytes(data))
    pending = model_cache.open_entry(gguf, convert)
    assert convert.calls == 1  # not rebuilt yet: the size check passed
    assert pending.verified() == pending.path and pending.rebuilt and convert.calls == 2
    assert "does not match its recorded sha256" in capsys.readouterr().err
    assert why_invalid(pending.path) is None
