"""Cleaning and verbalising: pure functions, checked on hand-written cases."""
import pytest

from datagen.clean import check, normalise, split_answer, strip_decoration
from datagen.verbalise import number, ordinal, speakable, verbalise, year


@pytest.mark.parametrize("raw,clean", [
    ('1. "What is Adele\'s newest album?"', "What is Adele's newest album?"),
    ("2) **Who sang Bohemian Rhapsody?**", "Who sang Bohemian Rhapsody?"),
    ("- 'Play some jazz from the '90s'", "Play some jazz from the '90s"),
    ("Q: Who drums for Metallica?", "Who drums for Metallica?"),
    ("A: How long do I boil an egg?", "How long do I boil an egg?"),
    ("A-list singers touring in May?", "A-list singers touring in May?"),
    ("A. Lincoln's birthday?", "A. Lincoln's birthday?"),
    ("Chatbot: Who is Adele?", "Who is Adele?"),
    ("Question 3: Is it raining in Oslo?", "Is it raining in Oslo?"),
    ("(4) “Will it snow tomorrow?”", "Will it snow tomorrow?"),
    ("   ", ""),
])
def test_strip_decoration(raw, clean):
    assert strip_decoration(raw) == clean


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("Hi there", "too_short"),
    ("Here are ten questions about music:", "preamble"),
    ("Sure, here are some questions for you", "preamble"),
    (" ".join(["word"] * 31), "over_long"),
    ("Quelle est la meilleure chanson de Stromae?", "non_english"),
    ("Wer hat die Band Rammstein gegründet?", "non_english"),
    ("Check www.spotify.com for the song", "unspeakable"),
    ("What is the {album} of the year?", "unspeakable"),
    ("Play the song ☺ by Pharrell now", "unspeakable"),
    ("Generations of Pop: Dua Lipa.", "not_a_request"),
    ("Adele has released four albums.", "not_a_request"),
    ("Can you generate 8 chatbot questions about Adele?", "prompt_echo"),
    ("Play the latest single by Adele.", None),
    ("Who won Super Bowl XXXVI in 2002?", None),
    ("What's the temperature in Paris at 7:30 pm?", None),
])
def test_check_reasons(text, reason):
    assert check(text, set()) == reason


def test_statements_are_kept_when_asked_and_every_other_rule_still_holds():
    assert check("Adele has released four albums.", set(), requests_only=False) is None
    assert check("Here are ten statements about music:", set(), requests_only=False) == "preamble"
    assert check("Adele has released four albums", {normalise("adele has released four albums")},
                 requests_only=False) == "duplicate"


def test_duplicates_are_found_after_normalising():
    seen = {normalise("What is Adele's newest album?")}
    assert check("what is adele's newest ALBUM", seen) == "duplicate"
    assert check("What is Adele's oldest album?", seen) is None


def test_split_answer_keeps_one_candidate_per_line():
    answer = "Here you go:\n\n1. Who is Adele?\n2. Play jazz please\n"
    assert split_answer(answer) == ["Here you go:", "Who is Adele?", "Play jazz please"]


@pytest.mark.parametrize("n,words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (342, "three hundred forty two"),
                                     (1_000_001, "one million one")])
def test_number(n, words):
    assert number(n) == words


def test_ordinal_and_year():
    assert [ordinal(n) for n in (1, 2, 3, 12, 20, 21)] == [
        "first", "second", "third", "twelfth", "twentieth", "twenty first"]
    assert [year(y) for y in (1965, 1905, 1900, 2000, 2008, 2016)] == [
        "nineteen sixty five", "nineteen oh five", "nineteen hundred", "two thousand", "two thousand eight",
        "twenty sixteen"]


@pytest.mark.parametrize("written,spoken", [
    ("Who won Super Bowl XXXVI in 2002?", "Who won Super Bowl thirty six in two thousand two?"),
    ("Top hits of the 1960s and the '90s", "Top hits of the nineteen sixties and the nineties"),
    ("Is it 25°C at 7:30 pm?", "Is it twenty five degrees Celsius at seven thirty P M?"),
    ("Play the 2nd track & the 21st one", "Play the second track and the twenty first one"),
    ("It sold 1,500,000 copies for $1.5 million", "It sold one million five hundred thousand copies for one point five million dollars"),
    ("Was it 3-2 vs. Chelsea?", "Was it three to two versus Chelsea?"),
    ("Songs by AC/DC", "Songs by AC DC"),
    ("40% chance of rain, 10 km/h wind", "forty percent chance of rain, ten kilometers per hour wind"),
])
def test_verbalise(written, spoken):
    assert verbalise(written) == spoken
    assert speakable(spoken)
