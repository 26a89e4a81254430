"""decoders/rules.py: every branch of the selection rule (Eq. 3), its ablations and the end
rule, with hand-made logits and confidences; then `run`'s end rule on scripted streams, where
a sure adapter stands exactly where the rule must overrule it. The batched-vs-sequential
checks of the same rules are in test_adml.py."""

import pytest
import torch
import torch.nn.functional as F

from decoders import rules
from test_adml import tiny, tokenizer  # noqa: F401 (fixtures, hence F811 on the tests)
from whisper_min.decoding import DecodingOptions


def hand_made(conf_per_stream, tokens_per_stream, V: int = 8):
    """Logits (S, 1, V) whose softmax peaks at the given token with the given probability,
    turned into (conf, candidates) exactly as `rules.run` does."""
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
    assert rules.select(conf, cand, tau=0.025, strategy="das").item() == want_stream, case


@pytest.mark.parametrize("confs, want_stream", [
    ([0.50, 0.60, 0.40], 1),  # both conditions: the maximum
    ([0.50, 0.60, 0.49], 1),  # max only
    ([0.50, 0.51, 0.40], 0),  # min only: the base keeps its word (where `das` takes stream 2)
    ([0.50, 0.51, 0.49], 0),  # neither
])
def test_max_only_rule(confs, want_stream):
    conf, cand = hand_made(confs, [1, 2, 3])
    assert rules.select(conf, cand, tau=0.025, strategy="max-only").item() == want_stream


def test_das_rule_at_the_threshold_and_beyond():
    # confidences given directly, so that the differences are exact in binary
    cand = torch.tensor([[1], [2], [3]])
    conf = torch.tensor([[0.5], [0.5625], [0.5]])
    assert rules.select(conf, cand, tau=0.0625).item() == 1  # >= tau fires at equality
    conf = torch.tensor([[0.5], [0.5], [0.4375]])
    assert rules.select(conf, cand, tau=0.0625).item() == 2  # <= -tau fires at equality
    conf, cand = hand_made([0.01, 0.99, 0.001], [1, 2, 3])
    assert rules.select(conf, cand, tau=1.01).item() == 0  # tau > 1 never fires
    conf, cand = hand_made([0.5, 0.501, 0.3], [1, 2, 3])
    assert rules.select(conf, cand, tau=0.0).item() == 1  # tau = 0: always the most confident


def test_other_strategies():
    conf, cand = hand_made([0.5, 0.9, 0.8, 0.4], [1, 2, 2, 1])
    assert rules.select(conf, cand, strategy="base").item() == 0
    assert rules.select(conf, cand, strategy="most-confident").item() == 1
    assert rules.select(conf, cand, strategy="majority").item() == 0  # 2-2 tie: the base's token
    conf, cand = hand_made([0.5, 0.6, 0.7, 0.4], [1, 2, 2, 3])
    assert rules.select(conf, cand, strategy="majority").item() == 2  # token 2 by 2 votes, surest proposer
    # several utterances at once: one column each
    conf = torch.tensor([[0.5, 0.5], [0.9, 0.5], [0.1, 0.5]])
    cand = torch.tensor([[1, 1], [2, 2], [3, 3]])
    assert rules.select(conf, cand).tolist() == [1, 0]


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
    assert rules.base_ends(torch.tensor([chosen]), cand, eot).item() == want, case


class ScriptedStreams:
    """Streams for `rules.run` whose next-token logits follow a script: at step t, stream s
    proposes scripts[s][t] with logit heights[s] over a flat 0 (height 11 gives a confidence
    of ~0.54 over the 51865-token vocabulary, 13 gives ~0.89)."""

    def __init__(self, scripts, heights, V: int):
        self.scripts, self.heights, self.V, self.t = scripts, heights, V, 0

    def _next(self):
        logits = torch.zeros(len(self.scripts), 1, self.V)  # (S, U=1, V)
        for s, (script, height) in enumerate(zip(self.scripts, self.heights)):
            logits[s, 0, script[min(self.t, len(script) - 1)]] = height
        self.t += 1
        return logits

    def prefill(self, tokens):
        return self._next(), torch.zeros(1, tokens.shape[1], self.V)

    def step(self, token, offset):
        return self._next()


def test_end_base_keeps_a_sure_adapter_from_ending_the_transcript(tiny, tokenizer):  # noqa: F811
    words = tokenizer.encode(" one two three")
    eot, V = tokenizer.eot, tiny.dims.n_vocab
    base = words + [eot]
    adapter = words[:1] + [eot] * 3  # surer than the base that the transcript ends after "one"
    options = DecodingOptions(sample_len=8, without_timestamps=True)

    def decode_with(end):
        streams = ScriptedStreams([base, adapter], [11.0, 13.0], V)
        return rules.run(streams, torch.zeros(1, 4, 8), tokenizer, options, V, 448, 0.025, "max-only", end)[0]

    assert decode_with("any").text == "one"
    got = decode_with("base")
    assert got.text == "one two three" and got.stream_tokens == [2, 1]  # "one" was the surer adapter's
