"""Written text -> the words a TTS engine should say.

The manifest keeps the written form ("Who won Super Bowl 50 in 2016?"), because
that is what Whisper is trained to output. The TTS engine gets the spoken form
("Who won Super Bowl fifty in twenty sixteen?"): engines read digits, symbols
and units in their own, sometimes wrong, ways, and the audio must say exactly
what the manifest text means. A text whose spoken form still has characters
outside `SPEAKABLE` is rejected by `datagen.clean` as unspeakable.
"""
from __future__ import annotations

import re

SPEAKABLE = re.compile(r"^[A-Za-z][A-Za-z '\-,.?!;:]*$")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth",
            "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def number(n: int) -> str:
    """Cardinal words for 0 <= n < 10**12: 342 -> 'three hundred forty two'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number(rest))
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            rest = n % size
            return number(n // size) + " " + name + ("" if rest == 0 else " " + number(rest))
    raise ValueError(n)


def ordinal(n: int) -> str:
    """21 -> 'twenty first'."""
    words = number(n).split()
    last = words[-1]
    words[-1] = _ORDINAL.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def year(n: int) -> str:
    """Years are read in pairs: 1965 -> 'nineteen sixty five', 1905 -> 'nineteen oh five'."""
    if 2000 <= n <= 2009 or n % 1000 == 0:
        return number(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number(hi) + " hundred"
    return number(hi) + " " + (number(lo) if lo >= 10 else "oh " + number(lo))


def _plural(words: str) -> str:
    """'nineteen sixty' -> 'nineteen sixties' (for the 1960s)."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _roman(s: str) -> int:
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
    total = 0
    for a, b in zip(s, s[1:] + " "):
        total += -values[a] if values.get(b, 0) > values[a] else values[a]
    return total


_UNITS = [  # (pattern after a number, spoken unit); longest first
    (r"°\s?C\b", "degrees Celsius"), (r"°\s?F\b", "degrees Fahrenheit"), (r"°", "degrees"),
    (r"%", "percent"), (r"\s?km/h\b", "kilometers per hour"), (r"\s?mph\b", "miles per hour"),
    (r"\s?km\b", "kilometers"), (r"\s?cm\b", "centimeters"), (r"\s?mm\b", "millimeters"),
    (r"\s?kg\b", "kilograms"), (r"\s?lbs?\b", "pounds"),
]
_WORDS = [  # symbols and abbreviations engines misread
    (r"&", " and "), (r"\+", " plus "), (r"@", " at "), (r"\bvs\.?(?=\s)", "versus"),
    (r"\bNo\.\s?(?=\d)", "number "), (r"#(?=\d)", "number "), (r"\bDr\.", "Doctor"),
    (r"\bMr\.", "Mister"), (r"\bMrs\.", "Missus"), (r"\bSt\.(?=\s[A-Z])", "Saint"),
    (r"\ba\.m\.", "A M"), (r"\bp\.m\.", "P M"),
    (r"\band/or\b", "and or"), (r"(?<=[A-Z])/(?=[A-Z])", " "), (r"(?<=[a-z])/(?=[a-z])", " or "), (r"[\"“”‘’`*_]", ""),
]
# A Roman numeral is only read as a number after words that take one, since
# "I", "CD" and "MIX" are ordinary words elsewhere.
_ROMAN_AFTER = r"(Super Bowl|World War|WrestleMania|Volume|Vol\.|Part|Chapter|Rocky|Final Fantasy)"


def verbalise(text: str) -> str:
    """Return the spoken form of `text`; characters it cannot read are left as they are."""
    t = text.replace("’", "'")
    t = re.sub(_ROMAN_AFTER + r" ([IVXLC]{1,7})\b", lambda m: f"{m[1]} {number(_roman(m[2]))}", t)
    t = re.sub(r"\$(\d+(?:\.\d+)?)\s?(million|billion)?",
               lambda m: f"{m[1]} {m[2] + ' ' if m[2] else ''}dollars", t)
    t = re.sub(r"\b(\d{1,2}):(\d\d)\s?([ap])\.?m\.?\b",
               lambda m: f"{m[1]}:{m[2]} {m[3].upper()} M", t, flags=re.IGNORECASE)
    t = re.sub(r"\b(\d{1,2})\s?([ap])\.?m\.?(?=\W|$)",
               lambda m: f"{m[1]} {m[2].upper()} M", t, flags=re.IGNORECASE)
    t = re.sub(r"\b(\d{1,2}):(\d\d)\b", lambda m: number(int(m[1])) + (
        "" if m[2] == "00" else " " + (number(int(m[2])) if int(m[2]) >= 10 else "oh " + number(int(m[2])))), t)
    for pattern, words in _UNITS:
        t = re.sub(r"(\d)" + pattern, lambda m, w=words: f"{m[1]} {w}", t)
    for pattern, words in _WORDS:
        t = re.sub(pattern, words, t)
    t = re.sub(r"\b(1[1-9]|20)(\d0)s\b", lambda m: _plural(year(int(m[1] + m[2]))), t)
    t = re.sub(r"'(\d)0s\b", lambda m: _plural(number(int(m[1]) * 10)), t)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal(int(m[1])), t)
    t = re.sub(r"\b(\d{1,3}(?:,\d{3})+)\b", lambda m: m[1].replace(",", ""), t)
    t = re.sub(r"\b(\d+)\.(\d+)\b", lambda m: number(int(m[1])) + " point " + " ".join(_ONES[int(d)] for d in m[2]), t)
    t = re.sub(r"\b(\d+)\s?-\s?(\d+)\b", lambda m: f"{m[1]} to {m[2]}", t)
    t = re.sub(r"\b(1[1-9]\d\d|20\d\d)\b", lambda m: year(int(m[1])), t)
    t = re.sub(r"\b\d{1,12}\b", lambda m: number(int(m[0])), t)
    return re.sub(r"\s+", " ", t).strip()


def speakable(spoken: str) -> bool:
    return bool(SPEAKABLE.match(spoken))
