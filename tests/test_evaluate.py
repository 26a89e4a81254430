"""The WER normaliser rule by rule, WER against hand-counted alignments, and `das.py eval`
end to end on two real LibriVox clips with tiny.en."""

import json

import pytest

import das
from evaluation.evaluate import WordErrors, word_errors, wer
from evaluation.normalize import normalize

POCKETSPHINX_LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"


def same(a: str, b: str) -> None:
    assert normalize(a) == normalize(b), (normalize(a), normalize(b))


# --- the normaliser: each pair is what a reference and a transcript may say for one thing ---

def test_case_and_punctuation():
    assert normalize("Hello, World! Is it (really) \"on\"?") == "hello world is it really on"
    assert normalize("  many   spaces\tand\nlines ") == "many spaces and lines"
    assert normalize("...!?") == ""


def test_accents_and_curly_apostrophes():
    same("Beyoncé’s café", "beyonces cafe")


@pytest.mark.parametrize("written, spoken", [
    ("36", "thirty six"), ("36", "thirty-six"), ("2020", "twenty twenty"), ("2020", "two thousand and twenty"),
    ("2020", "two thousand twenty"), ("1984", "nineteen eighty-four"), ("1905", "nineteen oh five"),
    ("2021", "twenty twenty one"), ("1500", "fifteen hundred"), ("1,500", "one thousand five hundred"),
    ("150", "a hundred and fifty"), ("101", "one hundred and one"), ("0", "zero"), ("13", "thirteen"),
    ("2,500,000", "two million five hundred thousand"), ("2 million", "two million"),
    ("1.5 million", "one point five million"), ("3.5", "three point five"), ("3.14", "three point one four"),
    ("1st", "first"), ("2nd", "second"), ("23rd", "twenty third"), ("11th", "eleventh"), ("101st", "one hundred and first"),
    ("100th", "hundredth"), ("the 60s", "the sixties"), ("the '60s", "the sixties"), ("1960s", "nineteen sixties"),
    ("60's", "sixties"),
])
def test_numbers_become_digits(written, spoken):
    same(written, spoken)
    assert not any(w in normalize(spoken).split() for w in ("thirty", "twenty", "point", "hundred", "first"))


def test_number_runs_that_are_several_numbers():
    assert normalize("one two three") == "1 2 3"  # digits read one by one stay apart
    assert normalize("two million three million") == "2000003 million"  # greedy: no backtracking
    assert normalize("one and two") == "1 and 2"  # "and" joins only after hundred/thousand
    assert normalize("five twenty") == "5 20"


def test_clock_times_are_not_years():
    same("10:30 a.m.", "ten thirty AM")
    same("12:30", "twelve thirty")
    same("7:45 p.m.", "seven forty-five pm")
    same("10:00", "ten o'clock")
    same("10:05", "ten oh five")


def test_number_words_inside_ordinary_words_are_untouched():
    assert normalize("someone often tone") == "someone often tone"
    assert normalize("what's the point") == "what is the point"
    assert normalize("a lot") == "a lot"  # "a" is one only before hundred/thousand/...
    assert normalize("hundreds of fans") == "hundreds of fans"


@pytest.mark.parametrize("written, spoken", [
    ("50%", "fifty percent"), ("50 %", "fifty per cent"), ("36°", "thirty six degrees"),
    ("36°F", "thirty-six degrees Fahrenheit"), ("-5 °C", "minus five degrees celsius"),
    ("$20", "twenty dollars"), ("$1.5 million", "one point five million dollars"), ("rock & roll", "rock and roll"),
])
def test_symbols_become_words(written, spoken):
    same(written, spoken)


def test_covid_hyphen_is_not_a_minus_sign():
    assert normalize("covid-19") == "covid 19"


@pytest.mark.parametrize("short, long", [
    ("What's", "what is"), ("it's", "it is"), ("won't", "will not"), ("can't", "cannot"), ("can't", "can not"),
    ("don't", "do not"), ("we're", "we are"), ("I've", "I have"), ("they'll", "they will"), ("I'm", "I am"),
    ("let's", "let us"), ("I'd", "I would"), ("gonna", "going to"),
])
def test_contractions(short, long):
    same(short, long)


def test_possessive_s_is_not_is():
    assert normalize("John's car") == "johns car"
    assert normalize("the Beatles' song") == "the beatles song"


@pytest.mark.parametrize("a, b", [
    ("colour", "color"), ("favourite", "favorite"), ("centre", "center"), ("theatre", "theater"),
    ("OK", "okay"), ("O.K.", "okay"), ("Mr. Smith", "mister smith"), ("Dr. Who", "doctor who"),
    ("Lakers vs. Celtics", "lakers versus celtics"), ("U.S.", "US"), ("grey", "gray"),
])
def test_spelling_variants(a, b):
    same(a, b)


def test_hyphens_split():
    same("ill-disposed", "ill disposed")
    same("hip-hop", "hip hop")


@pytest.mark.parametrize("text", [
    "Hey Meta, play some jazz", "hey meta play some jazz", "Hey Siri, play some jazz", "OK Google, play some jazz",
    "Okay Google play some jazz", "Alexa, play some jazz", "Hey Google! Play some jazz", "Hey Alexa play some jazz",
])
def test_wake_words_removed_at_start(text):
    assert normalize(text) == "play some jazz"


def test_wake_words_kept_elsewhere():
    assert normalize("play songs by alexa") == "play songs by alexa"
    assert normalize("hey there meta") == "hey there meta"


def test_idempotent():
    text = "Hey Meta, what's the weather for the 1st of May 2024? It's 36°F, 50% rain, thirty-six mph."
    once = normalize(text)
    assert normalize(once) == once


# --- WER, hand-counted ---

def test_word_errors_hand_counted():
    assert word_errors("a b c".split(), "a b c".split()) == WordErrors(0, 0, 0, 3)
    assert word_errors("a b c".split(), "a x c".split()) == WordErrors(1, 0, 0, 3)
    assert word_errors("a b c".split(), "a c".split()) == WordErrors(0, 1, 0, 3)
    assert word_errors("a b c".split(), "a b x c".split()) == WordErrors(0, 0, 1, 3)
    # "the cat sat" -> "cat sat down": delete "the", insert "down" (2), not 3 substitutions
    assert word_errors("the cat sat".split(), "cat sat down".split()) == WordErrors(0, 1, 1, 3)
    assert word_errors("a b".split(), "x y z".split()) == WordErrors(2, 0, 1, 2)


def test_empty_hypothesis_and_reference():
    assert word_errors("a b c".split(), []) == WordErrors(0, 3, 0, 3)
    assert word_errors([], "a b".split()) == WordErrors(0, 0, 2, 0)
    assert word_errors([], []) == WordErrors(0, 0, 0, 0)
    assert wer(["a b c"], [""]) == 1.0
    # an empty reference still counts its insertions against the corpus
    assert wer(["a b c d", ""], ["a b c d", "uh huh"]) == 0.5
    with pytest.raises(ValueError, match="no words"):
        wer(["", "Hey Meta"], ["", ""])


def test_corpus_wer_is_pooled_not_averaged():
    # utterance WERs 1/1 and 0/9: the mean would be 50%, the corpus WER is 1/10
    assert wer(["one", "a b c d e f g h i"], ["won", "a b c d e f g h i"]) == pytest.approx(0.1)


def test_wer_normalises_both_sides():
    assert wer(["Hey Meta, what's the temperature? It's 36°F."],
               ["What is the temperature. It is thirty-six degrees fahrenheit"]) == 0.0


# --- das.py eval end to end ---

def test_eval_end_to_end(tmp_path, capsys):
    refs = {}
    for line in open(f"{POCKETSPHINX_LIBRIVOX}/transcription"):
        text, _, utt = line.rpartition("(")
        refs[utt.strip().rstrip(")")] = text.replace("<s>", "").replace("</s>", "").strip()
    clips = ["sense_and_sensibility_01_austen_64kb-0880", "sense_and_sensibility_01_austen_64kb-0930"]
    rows = [{"audio": f"{POCKETSPHINX_LIBRIVOX}/{c}.wav", "text": refs[c], "duration": 0} for c in clips]
    rows.append({"audio": "missing.wav", "text": "never heard"})  # relative to the manifest: not there
    (tmp_path / "set").mkdir()
    manifest = tmp_path / "set" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    out = tmp_path / "res.json"
    rc = das.main(["eval", "--model", "tiny.en", "--data", str(manifest), "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 1  # a file was skipped
    assert "missing.wav: no such file" in captured.err and "bad manifest line" in captured.err
    assert "WER %" in captured.out and "set" in captured.out
    res = json.loads(out.read_text())
    assert res["model"] == "tiny.en" and res["loras"] == []
    (r,) = res["results"]
    assert r["name"] == "set" and r["utterances"] == 2 and r["skipped"] == 1
    assert r["ref_words"] == 8 + 8
    assert 3.0 < r["audio_seconds"] < 10.0 and 0 < r["rtf"] < 5
    assert r["wer"] < 20  # tiny.en gets these two short, clean clips (nearly) right
    assert len(r["details"]) == 2 and r["details"][0]["ref_norm"] == "he was not an ill disposed young man"


def test_eval_refuses_bad_arguments_before_loading_a_model(tmp_path, capsys):
    manifest = tmp_path / "set" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("")
    for args, message in ((["--data", str(tmp_path / "none.jsonl")], f"no such manifest: {tmp_path / 'none.jsonl'}"),
                          (["--data", str(manifest), "--name", "a", "b"], "2 --name labels for 1 --data files"),
                          (["--data", str(manifest), "--limit", "0"], "--limit must be >= 1, not 0")):
        assert das.main(["eval", "--model", "does-not-exist", *args]) == 2
        assert message in capsys.readouterr().err
