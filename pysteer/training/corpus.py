"""Text corpora for SAE training: the model's own chat transcripts, or the user's files.

Both sources yield plain strings, one document at a time, in a deterministic order, so
the activation stream built on them can be resumed by document index alone:

- :class:`SelfChatCorpus`: prompts from templates × topics × instruction styles (a few
  thousand distinct prompts), answered by the model itself in batches with its chat
  template; each document is the whole transcript (template tokens, prompt, response,
  end-of-turn token) as text. Generation batch ``b`` always holds the same prompts and,
  when sampling, uses the seed ``(seed, b)``, so regenerating from any index gives the
  same documents. With a ``cache_dir`` every answered batch is also written there and
  read back instead of being generated again: later epochs, resumed runs and runs for
  other layers then cost a forward pass, not a generation.
- :class:`TextFileCorpus`: ``.txt`` / ``.md`` files (one document per file) and
  ``.jsonl`` files (a ``"text"`` field per line), given as paths or directories, cut into
  chunks of at most ``max_tokens`` tokens.

Held-out split: a document is held out when the SHA-256 of its key, read as a number in
[0, 1), is below ``heldout_fraction``. The key is the chunk text for files and the
prompt for self-chat (so held-out prompts are never answered for training). A document
is therefore in exactly one split, whatever order or subset of the corpus is read.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from .errors import TrainingError

SPLITS = ("train", "heldout")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")

__all__ = ["SPLITS", "is_heldout", "self_chat_prompts", "SelfChatCorpus", "TextFileCorpus"]


def is_heldout(key: str, fraction: float) -> bool:
    """True when ``sha256(key)`` / 2^64 (first 8 bytes) < ``fraction``: a fixed, order-free split."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise TrainingError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


# ------------------------------------------------------------------- self-chat prompts
_TEMPLATES = (
    "Explain {topic} to a curious teenager.", "Write a short story about {topic}.",
    "What are the main advantages and disadvantages of {topic}?", "Describe {topic}.",
    "Give me three fun facts about {topic}.", "Write a poem about {topic}.",
    "How would you teach a child about {topic}?", "Summarize the history of {topic}.",
    "Write a product description for something related to {topic}.",
    "What questions should I ask an expert on {topic}?", "Compare {topic} with something similar.",
    "Write a short email to a friend about {topic}.", "What is a common misconception about {topic}?",
    "Write a dialogue between two people discussing {topic}.", "Give step-by-step advice on {topic}.",
    "Why does {topic} matter today?", "Write a news headline and a short article about {topic}.",
    "List some words related to {topic} and explain each.", "Tell me a joke about {topic}.",
    "Write a persuasive paragraph in favour of {topic}.", "What would the future of {topic} look like?",
    "Write a diary entry by someone who loves {topic}.", "Answer as a scientist: what is {topic}?",
    "Plan a lesson about {topic}.",
)
_TOPICS = (
    "the ocean", "volcanoes", "honey bees", "the moon", "bicycles", "rain", "chess", "bread",
    "trains", "libraries", "owls", "rivers", "the piano", "coffee", "winter", "deserts",
    "friendship", "recycling", "electricity", "the internet", "dinosaurs", "gardening",
    "photography", "mountains", "sleep", "exercise", "music", "elephants", "the sun", "snow",
    "clocks", "pets", "cities", "forests", "space travel", "robots", "cooking pasta", "money",
    "languages", "the human heart", "airplanes", "earthquakes", "mathematics", "painting",
    "football", "birds", "tea", "castles", "computers", "islands", "weather forecasts", "maps",
    "the brain", "farming", "jazz", "pyramids", "vaccines", "bridges", "whales", "birthdays",
    "video games", "recipes for soup", "climate change", "ancient Rome", "bees and flowers",
    "batteries", "the night sky", "volunteering", "public speaking", "saving energy",
)
_STYLES = (
    "", " Answer in one short paragraph.", " Use bullet points.",
    " Your entire response should be in English, and in all lowercase letters.",
    " Your entire response should be in English and in all capital letters.",
    " Answer in fewer than 50 words.", " Write at least 150 words.",
    " Do not use any commas in your response.", " Wrap your entire response in double quotation marks.",
    " Include the keywords 'blue' and 'quiet' in your response.",
    " End your response with the exact phrase 'Is there anything else I can help with?'",
    " Give your answer a title wrapped in double angular brackets, like <<title>>.",
    " Respond in French.", " Answer with exactly three numbered points.",
)


def self_chat_prompts(seed: int = 0) -> list[str]:
    """Every template × topic × style prompt (24 × 70 × 14 = 23 520), shuffled by ``seed``."""
    prompts = [t.format(topic=topic) + style
               for t, topic, style in itertools.product(_TEMPLATES, _TOPICS, _STYLES)]
    random.Random(seed).shuffle(prompts)
    return prompts


class SelfChatCorpus:
    """The model's own chat transcripts for the generated prompts of one split.

    ``texts(split, start)`` yields transcript ``start``, ``start + 1``, … of that split;
    with ``cycle`` it wraps around forever (later passes use different sampling seeds
    when ``do_sample``; with greedy decoding they repeat).
    """

    add_special_tokens = False  # the chat template already holds every special token

    def __init__(self, model, tokenizer, *, n_prompts: Optional[int] = None, batch_size: int = 32,
                 max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 0.8,
                 seed: int = 0, heldout_fraction: float = 0.05,
                 cache_dir: "Optional[str | Path]" = None):
        if batch_size <= 0 or max_new_tokens <= 0:
            raise TrainingError("batch_size and max_new_tokens must be positive")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.do_sample, self.temperature, self.seed = do_sample, temperature, seed
        self.heldout_fraction = heldout_fraction
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        prompts = self_chat_prompts(seed)[:n_prompts]
        self._prompts = {split: [p for p in prompts if is_heldout(p, heldout_fraction) == (split == "heldout")]
                         for split in SPLITS}
        for split, chosen in self._prompts.items():
            if not chosen:
                raise TrainingError(f"the {split} split of the self-chat prompts is empty (n_prompts="
                                 f"{n_prompts}, heldout_fraction={heldout_fraction}); use more prompts")

    @property
    def description(self) -> str:
        mode = f"sampled at T={self.temperature}" if self.do_sample else "greedy"
        return (f"self-chat: {len(self._prompts['train'])} train / {len(self._prompts['heldout'])} "
                f"held-out generated prompts (templates x topics x instruction styles), responses "
                f"{mode}, up to {self.max_new_tokens} new tokens, prompt seed {self.seed}")

    def prompts(self, split: str) -> list[str]:
        _check_split(split)
        return list(self._prompts[split])

    def texts(self, split: str = "train", start: int = 0, cycle: bool = False) -> Iterator[str]:
        _check_split(split)
        prompts = self._prompts[split]
        n = len(prompts)
        per_pass = -(-n // self.batch_size)  # batches per pass; the last may be short
        epoch, index = divmod(start, n) if cycle else (0, start)
        batch, skip = divmod(index, self.batch_size)
        while cycle or epoch == 0:
            if batch >= per_pass:
                if not cycle:
                    return
                epoch, batch = epoch + 1, 0
            lo = batch * self.batch_size
            # Every pass cuts the prompts into the same batches: the same padding, so the
            # same greedy outputs (and cache entries), whichever index a run resumes from.
            chunk = prompts[lo:lo + self.batch_size]
            for text in self._cached_answer(split, chunk, epoch * per_pass + batch)[skip:]:
                yield text
            skip = 0
            batch += 1

    def _settings(self) -> dict:
        """What the transcripts depend on besides the prompts; a cache entry must match it."""
        model_name = getattr(getattr(self.model, "config", None), "_name_or_path", None)
        return {"model": model_name, "max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "temperature": self.temperature if self.do_sample else None, "seed": self.seed}

    def _cached_answer(self, split: str, prompts: list[str], batch_index: int) -> list[str]:
        if self.cache_dir is None:
            return self._answer(prompts, batch_index)
        from ..fileio import read_json_object, write_json_atomic

        # Greedy answers depend only on the batch's prompts, so a later epoch's batch with
        # the same prompts reuses the entry; sampled ones also depend on the batch index.
        digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
        name = f"{split}-{digest}" + (f"-b{batch_index}" if self.do_sample else "") + ".json"
        path = self.cache_dir / name
        settings = self._settings()
        if path.exists():
            entry = read_json_object(path, TrainingError)
            if entry.get("prompts") == prompts and entry.get("settings") == settings:
                return [str(t) for t in entry["texts"]]
            raise TrainingError(f"{path} holds transcripts made with other settings ({entry.get('settings')} "
                                f"vs now {settings}); use another cache directory or delete it")
        texts = self._answer(prompts, batch_index)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"prompts": prompts, "settings": settings, "texts": texts})
        return texts

    @torch.no_grad()
    def _answer(self, prompts: Sequence[str], batch_index: int) -> list[str]:
        from ..models import encode_prompts

        device = next(self.model.parameters()).device
        enc = encode_prompts(self.tokenizer, prompts, chat=True, device=device)
        kwargs = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                      pad_token_id=self.tokenizer.pad_token_id)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=1.0, top_k=0)
            torch.manual_seed(self.seed * 1_000_003 + batch_index)  # generate draws from the global RNG
        out = self.model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
        width = enc["input_ids"].shape[1]
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in range(len(prompts)):
            prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()]
            new = out[row, width:]
            ends = (new == eos).nonzero()
            if len(ends):  # keep the end-of-turn token, drop the padding after it
                new = new[: int(ends[0]) + 1]
            texts.append(self.tokenizer.decode(torch.cat([prompt_ids, new]).tolist(),
                                               skip_special_tokens=False))
        return texts


# ------------------------------------------------------------------------ user files
class TextFileCorpus:
    """Chunks of ≤ ``max_tokens`` tokens from ``.txt``/``.md``/``.jsonl`` files or directories.

    Directories are searched recursively for those suffixes; files are read in sorted
    path order. A ``.jsonl`` line must be an object with a string ``"text"`` field.
    """

    add_special_tokens = True  # raw text: let the tokenizer add BOS if the model uses one

    def __init__(self, paths: Sequence["str | Path"], tokenizer, *, max_tokens: int = 256,
                 heldout_fraction: float = 0.05):
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if max_tokens < 2:
            raise TrainingError(f"max_tokens must be at least 2, got {max_tokens}")
        self.tokenizer, self.max_tokens, self.heldout_fraction = tokenizer, max_tokens, heldout_fraction
        files: list[Path] = []
        for raw in paths:
            path = Path(raw)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
                if not found:
                    raise FileNotFoundError(f"corpus directory {path} holds no "
                                            f"{'/'.join(TEXT_SUFFIXES)} files")
                files.extend(found)
            elif path.is_file():
                if path.suffix not in TEXT_SUFFIXES:
                    raise TrainingError(f"corpus file {path}: expected a {'/'.join(TEXT_SUFFIXES)} file")
                files.append(path)
            else:
                raise FileNotFoundError(f"corpus path {path} does not exist")
        self.files = files

    @property
    def description(self) -> str:
        names = ", ".join(str(f) for f in self.files[:5]) + (", ..." if len(self.files) > 5 else "")
        return (f"text files ({len(self.files)}): {names}; chunks of <= {self.max_tokens} tokens, "
                f"held-out fraction {self.heldout_fraction}")

    def _documents(self) -> Iterator[str]:
        for path in self.files:
            if path.suffix == ".jsonl":
                with path.open(encoding="utf-8") as handle:
                    for number, line in enumerate(handle, 1):
                        if not line.strip():
                            continue
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise TrainingError(f"{path}:{number}: not valid JSON ({exc})") from None
                        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                            raise TrainingError(f"{path}:{number}: expected an object with a string "
                                             f"'text' field")
                        yield record["text"]
            else:
                yield path.read_text(encoding="utf-8")

    def chunks(self) -> Iterator[str]:
        """Every chunk of every document, in order, whatever its split."""
        for document in self._documents():
            ids = self.tokenizer(document, add_special_tokens=False)["input_ids"]
            # Leave room for a BOS the tokenizer may add when the chunk is encoded again.
            size = self.max_tokens - 1
            for lo in range(0, len(ids), size):
                text = self.tokenizer.decode(ids[lo:lo + size])
                if text.strip():
                    yield text

    def texts(self, split: str = "train", start: int = 0, cycle: bool = False) -> Iterator[str]:
        _check_split(split)
        want_heldout = split == "heldout"

        def one_pass() -> Iterator[str]:
            return (c for c in self.chunks() if is_heldout(c, self.heldout_fraction) == want_heldout)

        if not cycle:
            yield from itertools.islice(one_pass(), start, None)
            return
        first = list(itertools.islice(one_pass(), 1))
        if not first:
            raise TrainingError(f"the {split} split of {self.description} is empty")
        passes = itertools.chain.from_iterable(one_pass() for _ in itertools.count())
        yield from itertools.islice(passes, start, None)
