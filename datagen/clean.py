"""LLM answer -> candidate texts -> kept texts, each dropped one with its reason.

`split_answer` cuts an answer into one candidate per line and strips the
decoration models add (numbering, bullets, quotes, "Q:"). `check` returns why
a candidate must be dropped, or None to keep it. Dedup is on `normalise(text)`,
so "What's Adele's newest album?" and "what's adele's newest album" are one.
"""
from __future__ import annotations

import re
import unicodedata

from datagen.verbalise import speakable, verbalise

MIN_WORDS = 3
MAX_WORDS = 30   # a 30-word utterance is ~10 s of speech; Whisper's window is 30 s
MAX_CHARS = 200

_DECORATION = re.compile(
    r"""^\s*(?:
        [-*•·>]+\s*                        # bullets
      | \(?\d{1,3}\s*[.):\]]\s*            # 1. 1) (1) 1:
      | (?:question|request|q|answer|user|text|chatbot|example)\s*\d*\s*[:.-]\s*   # "Question 3:", "Q:", "User:"
      | a\s*:\s*                          # "A:" (a colon only: "A-list" and "A. Lincoln" stay)
    )+""", re.IGNORECASE | re.VERBOSE)
_QUOTES = "\"'“”‘’`*_"
# Common English function words: a real English sentence of 3+ words nearly always has one.
_ENGLISH = set("""a an the is are was were be been do does did what who whom whose which when
where why how can could would will should shall may might must i you he she it we they me my
your his her its our their this that these those of in on at to for from with by about and or
but if not no any some there here tell show play find give let please much many has have had""".split())
# A user utterance is a question, or a request that starts like one.
_REQUEST_START = set("""play tell show find give list name recommend search read set remind can could would
will is are am was were do does did have has what what's who who's whom whose when where which why how
please i i'd i'm let let's put start turn open look check suggest shuffle skip""".split())
# The model repeating its own prompt back, not something a user says.
_PROMPT_ECHO = re.compile(r"\b(chatbots?|generate \d+|voice assistant|questions or requests)\b", re.IGNORECASE)


def strip_decoration(line: str) -> str:
    line = unicodedata.normalize("NFKC", line).strip()
    line = re.sub(r"\*\*|__", "", line)     # markdown bold
    line = _DECORATION.sub("", line).strip()
    # Outer quotes go; an inner or leading apostrophe ("Adele's", "'90s") stays,
    # unless the line is wrapped in single quotes as a whole.
    if re.match(r"^'.*'[?.!]?$", line):
        line = re.sub(r"^'|'(?=[?.!]?$)", "", line)
    line = re.sub(r'^["“”‘`]+', "", line)
    line = re.sub(r'(?<=\s)["“”]+|["“”]+(?=\s)', "", line) if line.count('"') % 2 else line
    line = re.sub(r'["“”’`]+([?.!]?)$', r"\1", line)
    return line.strip()


def split_answer(answer: str) -> list[str]:
    """One candidate per non-empty line, decoration removed (empty ones kept: they get a reason)."""
    return [strip_decoration(line) for line in answer.splitlines() if line.strip()]


def normalise(text: str) -> str:
    """Key for duplicate detection: case, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < 0.97:
        return False
    words = re.findall(r"[a-z']+", text.lower())
    return any(w.strip("'") in _ENGLISH for w in words)


def check(text: str, seen: set[str], requests_only: bool = True) -> str | None:
    """Why `text` must be dropped, or None. Does not add it to `seen`. requests_only=False,
    for a domain spec with a "style", keeps statements too ("Please hold for the next
    available agent.")."""
    if not text:
        return "empty"
    words = text.split()
    if text.endswith(":") or (len(words) > 2 and re.match(r"(sure|here are|here is|okay)\b", text, re.I)):
        return "preamble"       # "Here are 10 questions:", not a user utterance
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS or len(text) > MAX_CHARS:
        return "over_long"
    if not is_english(text):
        return "non_english"
    if re.search(r"https?://|www\.|\.com\b|[{}<>\[\]|\\^~=]", text):
        return "unspeakable"    # URLs, markup, code
    if _PROMPT_ECHO.search(text):
        return "prompt_echo"
    if requests_only and not text.rstrip().endswith("?") and words[0].lower().strip(",.!") not in _REQUEST_START:
        return "not_a_request"  # a statement, a title or an answer
    if not speakable(verbalise(text)):
        return "unspeakable"    # a symbol or number form the verbaliser cannot read
    if normalise(text) in seen:
        return "duplicate"
    return None
