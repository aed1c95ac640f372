"""Tokenizers behind one interface: char, byte, tiktoken encodings and Hugging Face `tokenizers`.

Every tokenizer maps text to ids in ``[0, vocab_size)`` and has an end-of-text id (``eot_id``)
that the data pipeline puts after every document, and a pad id (``pad_id``) for padded batches.

* ``char``: the sorted set of characters of the training text, then ``eot``, then ``pad``.
* ``byte``: the 256 byte values of UTF-8, then ``eot`` (256), then ``pad`` (257).
* ``gpt2``, ``r50k_base``, ``p50k_base``, ``cl100k_base``, ``o200k_base``: tiktoken encodings;
  eot is the encoding's ``<|endoftext|>`` and pad is the same id (padded targets are masked
  with -1 by the loader, so the pad id never reaches the loss).
* ``bpe``: a byte-level BPE trained on the corpus with Hugging Face ``tokenizers``.
* a path to a ``tokenizer.json`` (or a folder holding one), a Hugging Face hub id, or one of
  the aliases ``llama_32k``, ``opt_50k``, ``mistral_32k``;
* a folder a tokenizer was saved in (``tokenizer_meta.json``: a checkpoint or prepared-data folder),
  which gives that tokenizer again, whatever its kind (a char vocabulary included).

``encode`` treats its input as plain text: a corpus that contains the string
``<|endoftext|>`` is encoded as ordinary characters, never as the special id. Special ids enter
the token stream only where the data pipeline puts them. ``decode`` renders eot as
``<|endoftext|>`` and drops char/byte pad ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tiktoken
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTok

from fastgpt.messages import cut

EOT_TEXT = "<|endoftext|>"
PAD_TEXT = "<|pad|>"
META_FILE = "tokenizer_meta.json"
HF_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.json"  # the Jinja chat template a tokenizer carries (fastgpt.data.chat_template)
TIKTOKEN_NAMES = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")
HUB_ALIASES = {
    "llama_32k": "hf-internal-testing/llama-tokenizer",
    "opt_50k": "peft-internal-testing/opt-125m",
    "mistral_32k": "unsloth/mistral-7b",
}
DEFAULT_BPE_VOCAB_SIZE = 4096
# simplify=True: a non-Latin character seen fewer times than this is deleted from BPE training text
SIMPLIFY_MIN_COUNT = 100
MAX_RUN = 256  # longest run of non-space characters BPE training sees as one pre-token
# special tokens looked up, in this order, in a tokenizer.json that is not ours
_EOT_CANDIDATES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
_PAD_CANDIDATES = (PAD_TEXT, "<pad>", "[PAD]")


class Tokenizer(ABC):
    """Text <-> ids. Subclasses set ``name``, ``vocab_size``, ``eot_id``, ``bos_id``, ``pad_id``."""

    name: str
    vocab_size: int  # size of the id space, specials included
    eot_id: int
    bos_id: int | None
    pad_id: int
    # a Jinja chat template ({"template", "bos_token", "eos_token"}) saved with the tokenizer; None: the default
    chat_template: dict[str, str | None] | None = None

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token texts -> ids, recognised in the text a chat template renders (never in ``encode``)."""
        return {EOT_TEXT: self.eot_id}

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The distinct special ids (eot, bos, pad), sorted."""
        ids = {self.eot_id, self.pad_id} | ({self.bos_id} if self.bos_id is not None else set())
        return tuple(sorted(ids))

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, read as plain text (no special tokens are recognised)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for each text; subclasses override with the library's fast path."""
        return [self.encode(text) for text in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; eot is rendered as ``<|endoftext|>``."""

    @abstractmethod
    def _meta(self) -> dict:
        """What ``load_tokenizer`` needs, besides the files ``save`` writes itself."""

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer_meta.json`` (and ``tokenizer.json`` where needed) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, **self._meta()}
        (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1))
        if self.chat_template is not None:
            (directory / CHAT_TEMPLATE_FILE).write_text(json.dumps(self.chat_template, ensure_ascii=False, indent=1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


def _check_ids(ids: Sequence[int], vocab_size: int, name: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"cannot decode id {bad[0]} with tokenizer {name!r}: ids must be in [0, {vocab_size})")


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet, then eot and pad."""

    def __init__(self, chars: str, name: str = "char") -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError(f"char tokenizer needs distinct characters, got {chars[:40]!r}")
        self.name, self.chars = name, "".join(sorted(chars))
        self.eot_id, self.pad_id, self.bos_id = len(chars), len(chars) + 1, None
        self.vocab_size = len(chars) + 2
        codepoints = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        self._lut = np.full(int(codepoints.max()) + 1, -1, dtype=np.int64)  # codepoint -> id
        self._lut[codepoints] = np.arange(len(chars))

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose alphabet is every character in ``texts``."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        if not chars:
            raise ValueError("cannot build a char tokenizer from empty text")
        return cls("".join(chars))

    def _encode_array(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self._lut[np.minimum(codepoints, len(self._lut) - 1)]
        ids[codepoints >= len(self._lut)] = -1
        if (ids < 0).any():
            unknown = sorted({chr(c) for c in codepoints[ids < 0]})
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(
                f"cannot encode {shown}{more}: not in this char tokenizer's vocabulary of {len(self.chars)} characters"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return self._encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # one vectorised lookup over the joined texts, split back by length in characters
        ids = self._encode_array("".join(texts))
        return [part.tolist() for part in np.split(ids, np.cumsum([len(t) for t in texts])[:-1])]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        specials = {self.eot_id: EOT_TEXT, self.pad_id: ""}
        return "".join(specials[i] if i in specials else self.chars[i] for i in ids)

    def _meta(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class ByteTokenizer(Tokenizer):
    """The 256 UTF-8 byte values, then eot (256) and pad (257)."""

    def __init__(self) -> None:
        self.name, self.eot_id, self.pad_id, self.bos_id, self.vocab_size = "byte", 256, 257, None, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        out = bytearray()
        for i in ids:
            if i < 256:
                out.append(i)
            elif i == self.eot_id:
                out += EOT_TEXT.encode()
        return out.decode("utf-8", errors="replace")

    def _meta(self) -> dict:
        return {"kind": "byte"}


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding; its BPE file comes from ``TIKTOKEN_CACHE_DIR`` or the network."""

    def __init__(self, name: str) -> None:
        try:
            self._enc = tiktoken.get_encoding(name)
        except OSError as e:  # requests' connection errors are OSErrors
            cache = os.environ.get("TIKTOKEN_CACHE_DIR", "unset")
            raise ValueError(
                f"tokenizer {name!r} needs its BPE file: could not download it ({type(e).__name__}) "
                f"and it is not in TIKTOKEN_CACHE_DIR ({cache}) — set TIKTOKEN_CACHE_DIR to a "
                "folder that has it"
            ) from e
        self.name, self.vocab_size = name, self._enc.n_vocab
        self.eot_id = self.pad_id = self._enc.eot_token
        self.bos_id = None

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        return self._enc.decode(list(ids))

    def _meta(self) -> dict:
        return {"kind": "tiktoken"}


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` (trained here, from a tokenizer.json or the hub)."""

    def __init__(
        self, tok: HFTok, name: str, eot: str | None = None, bos: str | None = None, pad: str | None = None
    ) -> None:
        self._tok, self.name = tok, name
        tok.encode_special_tokens = True  # "<|endoftext|>" in the text is plain text
        eot = eot or _first_known(tok, _EOT_CANDIDATES)
        if eot is None:
            raise ValueError(f"tokenizer {name!r} has none of the end-of-text tokens {list(_EOT_CANDIDATES)}")
        bos = bos or _first_known(tok, _BOS_CANDIDATES)
        pad = pad or _first_known(tok, _PAD_CANDIDATES) or eot
        self._specials = {"eot": eot, "bos": bos, "pad": pad}
        self.eot_id, self.pad_id = tok.token_to_id(eot), tok.token_to_id(pad)
        self.bos_id = tok.token_to_id(bos) if bos else None
        self.vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        _check_ids(ids, self.vocab_size, self.name)
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        super().save(directory)
        self._tok.save(str(Path(directory) / HF_FILE))

    def _meta(self) -> dict:
        return {"kind": "hf", **self._specials}


def _first_known(tok: HFTok, candidates: Sequence[str]) -> str | None:
    return next((t for t in candidates if tok.token_to_id(t) is not None), None)


def _is_latin(codepoint: int) -> bool:
    """ASCII, Latin-1, Latin Extended-A/B, Latin Extended Additional, General Punctuation."""
    return codepoint < 0x0250 or 0x1E00 <= codepoint <= 0x1EFF or 0x2000 <= codepoint <= 0x206F


def simplify_texts(texts: Sequence[str], min_count: int = SIMPLIFY_MIN_COUNT) -> list[str]:
    """Delete every non-Latin character (see ``_is_latin``) seen fewer than ``min_count`` times."""
    counts: dict[str, int] = {}
    for text in texts:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        values, n = np.unique(codepoints[codepoints >= 0x0250], return_counts=True)
        for c, k in zip(values.tolist(), n.tolist(), strict=True):
            counts[chr(c)] = counts.get(chr(c), 0) + k
    rare = {ord(c): None for c, k in counts.items() if k < min_count and not _is_latin(ord(c))}
    return [text.translate(rare) for text in texts] if rare else list(texts)


def train_bpe(texts: Iterable[str], vocab_size: int, simplify: bool = False) -> HFTokenizer:
    """Byte-level BPE with ``vocab_size`` ids at most (fewer if the text has too few pairs).

    ``simplify=True`` splits every digit into its own pre-token (numbers are spelled digit by
    digit) and trains on ``simplify_texts(texts)``; encoding still covers every character through
    the 256 byte symbols.
    """
    if vocab_size < 258:
        raise ValueError(f"bpe vocab_size must be at least 258 (256 bytes + eot + pad), got {vocab_size}")
    texts = list(texts)
    tok = HFTok(models.BPE())
    # runs of more than MAX_RUN non-space characters are cut into pieces first: BPE training is
    # quadratic in the length of a pre-token (1 MB without whitespace took minutes), and no GPT-2
    # pre-token crosses from a non-space character into the whitespace that starts the next piece,
    # so text without such runs is split exactly as by ByteLevel alone
    steps = [pre_tokenizers.Split(Regex(rf"\s*\S{{1,{MAX_RUN}}}"), behavior="isolated")]
    if simplify:
        texts = simplify_texts(texts)
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([*steps, pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT, PAD_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return HFTokenizer(tok, "bpe", eot=EOT_TEXT, pad=PAD_TEXT)


def _load_hf_file(path: Path, name: str) -> HFTokenizer:
    file = path / HF_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer {name!r}: {file} does not exist (a fastgpt run's tokenizer: name "
                                "one of its ckpt-NNNNNN folders)")
    return HFTokenizer(_read_hf_json(file, f"tokenizer {name!r}"), name)


def _read_hf_json(file: Path, what: str) -> HFTok:
    try:
        return HFTok.from_file(str(file))
    except Exception as exc:  # the tokenizers library raises its own Exception type
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"{what}: {file} is not a readable tokenizer.json ({reason})") from None


def _load_hub(name: str) -> HFTokenizer:
    hub_id = HUB_ALIASES.get(name, name)
    try:
        tok = HFTok.from_pretrained(hub_id)
    except Exception as e:  # hub client errors have no common base class
        reason = " ".join(str(e).split())[:200]
        raise ValueError(
            f"tokenizer {name!r}: could not get tokenizer.json of {hub_id!r} from the Hugging Face "
            f"hub ({type(e).__name__}: {reason}) — needs network access, or pass a local tokenizer.json"
        ) from e
    return HFTokenizer(tok, name)


def _valid_names() -> str:
    names = ["char", "byte", *TIKTOKEN_NAMES, "bpe", *HUB_ALIASES]
    return ", ".join(names) + ", a path to a tokenizer.json (or its folder), or a hub id 'owner/name'"


def path_exists(name: str) -> bool:
    """``Path(name).exists()``, False for names no file can have (too long, an unknown ~user)."""
    try:
        return Path(name).expanduser().exists()
    except (OSError, RuntimeError):  # a name too long for a file name; an unknown ~user
        return False


def is_tokenizer_path(name: str) -> bool:
    """True when ``build_tokenizer`` reads ``name`` as a local tokenizer.json (or its folder)."""
    if name in ("char", "bpe", "byte", *TIKTOKEN_NAMES):
        return False
    return (path_exists(name) or name.endswith(".json") or name.startswith((".", "/", "~"))
            or name.count("/") > 1)


def build_tokenizer(
    name: str,
    texts: Iterable[str] | None = None,
    vocab_size: int | None = None,
    simplify: bool = False,
) -> Tokenizer:
    """The tokenizer called ``name``; ``char`` and ``bpe`` are trained on ``texts``.

    ``vocab_size`` (default 4096) and ``simplify`` apply to ``bpe`` only.
    """
    if name in ("char", "bpe"):
        if texts is None:
            raise ValueError(f"tokenizer {name!r} is trained on the corpus: pass texts")
        if name == "char":
            return CharTokenizer.train(texts)
        return train_bpe(texts, vocab_size or DEFAULT_BPE_VOCAB_SIZE, simplify)
    if name == "byte":
        return ByteTokenizer()
    if name in TIKTOKEN_NAMES:
        return TiktokenTokenizer(name)
    if is_tokenizer_path(name):
        if (Path(name).expanduser() / META_FILE).is_file():  # a folder a fastgpt tokenizer was saved in
            return load_tokenizer(Path(name).expanduser())
        return _load_hf_file(Path(name).expanduser(), name)
    if name in HUB_ALIASES or name.count("/") == 1:
        return _load_hub(name)
    raise ValueError(f"unknown tokenizer {cut(name)}; valid: {_valid_names()}")


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Rebuild the tokenizer that ``Tokenizer.save`` wrote into ``directory``.

    Every field read is checked: a bad one is a ValueError naming the file and the field.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no saved tokenizer in {directory}: {META_FILE} is missing")
    tokenizer = _from_meta(_read_json(meta_path), directory)
    template_path = directory / CHAT_TEMPLATE_FILE
    if template_path.is_file():
        tokenizer.chat_template = _chat_template(_read_json(template_path), template_path)
    return tokenizer


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path} is not JSON fastgpt reads: it is nested too deeply") from None


def _bad_field(path: Path, field: str, expected: str, value: object) -> ValueError:
    return ValueError(f"{path}: field {field!r} must be {expected}, got {repr(value)[:60]}")


def _chat_template(saved: object, path: Path) -> dict[str, str | None]:
    if not isinstance(saved, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(saved).__name__}")
    if not isinstance(saved.get("template"), str):
        raise _bad_field(path, "template", "a string", saved.get("template"))
    for field in ("bos_token", "eos_token"):
        if not isinstance(saved.get(field), str | None):
            raise _bad_field(path, field, "a string or null", saved.get(field))
    return {k: saved.get(k) for k in ("template", "bos_token", "eos_token")}


def _from_meta(meta: object, directory: Path) -> Tokenizer:
    path = directory / META_FILE
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    kind, name = meta.get("kind"), meta.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_field(path, "name", "a non-empty string", name)
    if kind == "char":
        chars = meta.get("chars")
        if isinstance(chars, str):
            try:
                return CharTokenizer(chars, name)
            except ValueError:  # empty, repeated characters, a lone surrogate (UTF-32 cannot encode it)
                pass
        raise _bad_field(path, "chars", "a string of distinct characters", chars)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "tiktoken":
        if name not in TIKTOKEN_NAMES:
            raise _bad_field(path, "name", f"one of {', '.join(TIKTOKEN_NAMES)}", name)
        return TiktokenTokenizer(name)
    if kind == "hf":
        tok = _read_hf_json(directory / HF_FILE, "saved tokenizer")
        specials = {}
        for field in ("eot", "bos", "pad"):
            value = specials[field] = meta.get(field)
            if value is None and field == "bos":
                continue
            if not isinstance(value, str) or tok.token_to_id(value) is None:
                raise _bad_field(path, field, f"a token of {directory / HF_FILE}", value)
        return HFTokenizer(tok, name, **specials)
    raise _bad_field(path, "kind", "one of char, byte, tiktoken, hf", kind)


def same_tokenizer(a: Tokenizer, b: Tokenizer) -> bool:
    """True when ``a`` and ``b`` save the same vocabulary: the same files, aside from the chat template and
    the name (a tokenizer.json's path) of a tokenizer that is not a tiktoken encoding."""
    if (type(a), a.vocab_size, a.special_ids) != (type(b), b.vocab_size, b.special_ids):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        saved = []
        for name, tok in (("a", a), ("b", b)):
            tok.save(Path(tmp) / name)
            files = {f.name: f.read_bytes() for f in (Path(tmp) / name).iterdir() if f.name != CHAT_TEMPLATE_FILE}
            meta = json.loads(files.pop(META_FILE))
            if meta.get("kind") != "tiktoken":
                meta.pop("name", None)
            saved.append((meta, files))
        return saved[0] == saved[1]
