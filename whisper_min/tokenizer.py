"""Whisper's tokenizer as a `tiktoken.Encoding`, built from the `tokenizer.json` that
ships beside the weights (no vocabulary file is downloaded).

`tokenizer.json` stores byte-level BPE tokens as printable unicode (GPT-2's byte-to-unicode
trick); tiktoken wants raw bytes ranked by id, so each token is mapped back to bytes. The
special tokens follow the regular vocabulary in a fixed order that openai/whisper defines:
end of text, start of transcript, one per language, translate, transcribe, start of LM,
start of previous, no speech, no timestamps, then 1501 timestamps <|0.00|>..<|30.00|>.
"""

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import tiktoken

# openai/whisper's language order; a model with n languages uses the first n codes.
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
).split()

# Whisper's pre-tokenisation regex (the GPT-2 one).
PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _unicode_to_bytes() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the other
    bytes to code points from 256 upwards, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def build_encoding(tokenizer_json: str | Path, num_languages: int) -> tiktoken.Encoding:
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    byte_of = _unicode_to_bytes()
    ranks = {}
    for token, rank in spec["model"]["vocab"].items():
        if token.startswith("<|") and token.endswith("|>"):
            continue  # special tokens are added below, in Whisper's order
        ranks[bytes(byte_of[c] for c in token)] = rank
    n_regular = len(ranks)
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in LANGUAGES[:num_languages]],
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>", *[f"<|{i * 0.02:.2f}|>" for i in range(1501)]]
    return tiktoken.Encoding(name=Path(tokenizer_json).parent.name, explicit_n_vocab=n_regular + len(specials),
                             pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={t: n_regular + i for i, t in enumerate(specials)})


@dataclass(frozen=True)
class Tokenizer:
    """Whisper's special-token bookkeeping around a tiktoken encoding."""

    encoding: tiktoken.Encoding
    num_languages: int
    multilingual: bool
    language: str | None = None
    task: str = "transcribe"
    special: dict = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "special", self.encoding._special_tokens)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, tokens) -> str:
        return self.encoding.decode([t for t in tokens if t < self.timestamp_begin and t < self.eot])

    def decode_with_timestamps(self, tokens) -> str:
        return self.encoding.decode(list(tokens))

    eot = property(lambda self: self.special["<|endoftext|>"])
    sot = property(lambda self: self.special["<|startoftranscript|>"])
    transcribe = property(lambda self: self.special["<|transcribe|>"])
    translate = property(lambda self: self.special["<|translate|>"])
    sot_lm = property(lambda self: self.special["<|startoflm|>"])
    sot_prev = property(lambda self: self.special["<|startofprev|>"])
    no_speech = property(lambda self: self.special["<|nospeech|>"])
    no_timestamps = property(lambda self: self.special["<|notimestamps|>"])
    timestamp_begin = property(lambda self: self.special["<|0.00|>"])

    def language_token(self, language: str) -> int:
        if f"<|{language}|>" not in self.special:
            raise ValueError(f"language {language!r} is not one of this model's {self.num_languages} languages")
        return self.special[f"<|{language}|>"]

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        """<|startoftranscript|> [<|lang|> <|task|>]: English-only models stop after the first."""
        if not self.multilingual:
            return (self.sot,)
        seq = [self.sot]
        if self.language is not None:
            seq.append(self.language_token(self.language))
        seq.append(self.transcribe if self.task == "transcribe" else self.translate)
        return tuple(seq)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of symbols a speaker does not say (music notes, brackets, ...), so that
        suppressing them keeps captions-style annotations out of transcripts. The same list
        openai/whisper derives, computed the same way from the vocabulary."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")  # multi-token symbols: suppressing the first token is enough
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + list(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))


def get_tokenizer(tokenizer_json: str | Path, n_vocab: int, language: str | None = "en",
                  task: str = "transcribe") -> Tokenizer:
    multilingual = n_vocab >= 51865
    num_languages = n_vocab - 51765 - int(multilingual)
    encoding = build_encoding(tokenizer_json, num_languages)
    if encoding.n_vocab != n_vocab:
        raise ValueError(f"{tokenizer_json}: vocabulary has {encoding.n_vocab} tokens, the model {n_vocab}")
    return Tokenizer(encoding, num_languages, multilingual, language if multilingual else None, task)
