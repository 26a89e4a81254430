"""adml_select: every branch of the selection rule (Eq. 3), its ablations and the end rule,
with hand-made logits and confidences."""

import pytest
import torch
import torch.nn.functional as F

import adml_select


def hand_made(conf_per_stream, tokens_per_stream, V: int = 8):
    """Logits (S, 1, V) whose softmax peaks at the given token with the given probability,
    turned into (conf, candidates) exactly as `adml.run` does."""
    rows = []
    for p, t in zip(conf_per_stream, tokens_per_stream):
        probs = torch.full((V,), (1 - p) / (V - 1))
        probs[t] = p
        rows.append(probs.log())
    logits = torch.stack(rows)[:, None]  # (S, U=1, V)
    logprobs = F.log_softmax(logits, dim=-1)
    return logprobs.max(dim=-1).values.exp(), logits.argmax(dim=-1)


@pytest.mark.parametrize("confs, want_stream, case", [
    ([0.50, 0.60, 0.40], 1, "both conditions: the maximum wins"),
    ([0.50, 0.60, 0.49], 1, "max only"),
    ([0.50, 0.51, 0.40], 2, "min only: the least confident stream (our reading)"),
    ([0.50, 0.51, 0.49], 0, "neither: the base"),
    ([0.50, 0.50, 0.50], 0, "all equal: the base"),
    ([0.30, 0.90, 0.90], 1, "tie for the maximum: the lowest index"),
    ([0.90, 0.91, 0.10], 2, "min only with a higher but close max"),
])
def test_das_rule_every_branch(confs, want_stream, case):
    conf, cand = hand_made(confs, [1, 2, 3])
    assert adml_select.select(conf, cand, tau=0.025, strategy="das").item() == want_stream, case


@pytest.mark.parametrize("confs, want_stream", [
    ([0.50, 0.60, 0.40], 1),  # both conditions: the maximum
    ([0.50, 0.60, 0.49], 1),  # max only
    ([0.50, 0.51, 0.40], 0),  # min only: the base keeps its word (where `das` takes stream 2)
    ([0.50, 0.51, 0.49], 0),  # neither
])
def test_max_only_rule(confs, want_stream):
    conf, cand = hand_made(confs, [1, 2, 3])
    assert adml_select.select(conf, cand, tau=0.025, strategy="max-only").item() == want_stream


def test_das_rule_at_the_threshold_and_beyond():
    # confidences given directly, so that the differences are exact in binary
    cand = torch.tensor([[1], [2], [3]])
    conf = torch.tensor([[0.5], [0.5625], [0.5]])
    assert adml_select.select(conf, cand, tau=0.0625).item() == 1  # >= tau fires at equality
    conf = torch.tensor([[0.5], [0.5], [0.4375]])
    assert adml_select.select(conf, cand, tau=0.0625).item() == 2  # <= -tau fires at equality
    conf, cand = hand_made([0.01, 0.99, 0.001], [1, 2, 3])
    assert adml_select.select(conf, cand, tau=1.01).item() == 0  # tau > 1 never fires
    conf, cand = hand_made([0.5, 0.501, 0.3], [1, 2, 3])
    assert adml_select.select(conf, cand, tau=0.0).item() == 1  # tau = 0: always the most confident


def test_other_strategies():
    conf, cand = hand_made([0.5, 0.9, 0.8, 0.4], [1, 2, 2, 1])
    assert adml_select.select(conf, cand, strategy="base").item() == 0
    assert adml_select.select(conf, cand, strategy="most-confident").item() == 1
    assert adml_select.select(conf, cand, strategy="majority").item() == 0  # 2-2 tie: the base's token
    conf, cand = hand_made([0.5, 0.6, 0.7, 0.4], [1, 2, 2, 3])
    assert adml_select.select(conf, cand, strategy="majority").item() == 2  # token 2 by 2 votes, surest proposer
    # several utterances at once: one column each
    conf = torch.tensor([[0.5, 0.5], [0.9, 0.5], [0.1, 0.5]])
    cand = torch.tensor([[1, 1], [2, 2], [3, 3]])
    assert adml_select.select(conf, cand).tolist() == [1, 0]


@pytest.mark.parametrize("candidates, chosen, want, case", [
    ([5, 9, 3], 1, 0, "the chosen adapter proposes end-of-text, the base does not: the base's word"),
    ([9, 5, 3], 1, 0, "the base proposes end-of-text: the transcript ends"),
    ([9, 9, 3], 1, 0, "both end: the base (the same token)"),
    ([5, 6, 9], 1, 1, "an adapter not chosen proposes end-of-text: the choice stands"),
    ([5, 6, 3], 2, 2, "no end-of-text anywhere: the choice stands"),
])
def test_base_ends(candidates, chosen, want, case):
    eot = 9
    cand = torch.tensor(candidates)[:, None]  # (S, U=1)
    assert adml_select.base_ends(torch.tensor([chosen]), cand, eot).item() == want, case


@pytest.mark.parametrize("candidates, owner, chosen, want, case", [
    ([5, 6, 7], 0, 1, 0, "the owner (base) proposes a piece of its word: it keeps the word"),
    ([5, 2, 7], 1, 2, 1, "the owner is an adapter and goes on with its word"),
    ([1, 6, 7], 0, 1, 1, "the owner proposes a new word: Eq. (3)'s choice stands"),
    ([5, 6, 3], 2, 0, 0, "the owner proposes punctuation: Eq. (3)'s choice stands"),
])
def test_keep_word(candidates, owner, chosen, want, case):
    pieces = torch.tensor([False, False, True, False, False, True, False, False])  # tokens 2 and 5 continue a word
    cand = torch.tensor(candidates)[:, None]  # (S, U=1)
    got = adml_select.keep_word(torch.tensor([chosen]), torch.tensor([owner]), cand, pieces)
    assert got.item() == want, case


@pytest.mark.parametrize("chosen, k, want, case", [
    (1, 3, 1, "the adapter's token 4 is the base's second choice: inside its top 3, taken"),
    (1, 2, 1, "inside its top 2, taken"),
    (1, 1, 0, "outside its top 1: the base's token"),
    (2, 3, 0, "the other adapter's token 7 is the base's fourth choice: the base's token"),
    (2, 4, 2, "inside its top 4, taken"),
    (2, 0, 2, "k = 0: no guard"),
    (0, 1, 0, "the base chose: it stays"),
])
def test_base_guard(chosen, k, want, case):
    base_logprobs = torch.tensor([[0.0, -5.0, -3.0, -4.0, -1.0, -9.0, -9.0, -3.5]])  # (U=1, V): by rank 0, 4, 2, 7, 3, 1
    cand = torch.tensor([0, 4, 7])[:, None]  # (S, U=1): the base proposes 0, the adapters 4 and 7
    assert adml_select.base_guard(torch.tensor([chosen]), cand, base_logprobs, k).item() == want, case


def test_word_pieces_of_the_real_tokenizer():
    import whisper_min

    tokenizer = whisper_min.get_tokenizer("base", language="en")
    pieces = adml_select.word_pieces(tokenizer, 51865)
    assert adml_select.word_pieces(tokenizer, 51865) is pieces  # built once per tokenizer

    def flags(text):
        return [bool(pieces[t]) for t in tokenizer.encode(text)]

    assert flags(" 4th") == [False, True] and flags(" don't")[-1]  # "th" and "'t" carry on their word
    assert not any(flags(" hello, world.")[1:2]) and not pieces[tokenizer.encode(" world")[0]]
    assert not pieces[tokenizer.eot:].any()  # special and timestamp tokens never do
    partial = [t for t in range(tokenizer.eot) if tokenizer.decode([t]).startswith("\ufffd")]
    assert partial and pieces[partial].all()  # a piece of a multi-byte character carries on
