"""adml.run's rules on scripted streams: each stream proposes a fixed token sequence with a
fixed confidence, so a test can put a sure adapter exactly where a rule must overrule it
(`--end base`, `--switch word`, `--guard K`). The batched-vs-sequential checks of the same
rules are in test_adml.py."""

import torch

import adml
from test_adml import tiny, tokenizer  # noqa: F401 (fixtures, hence F811 on the tests)
from whisper_min.decoding import DecodingOptions


class ScriptedStreams:
    """Streams for `adml.run` whose next-token logits follow a script: at step t, stream s
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
        return adml.run(streams, torch.zeros(1, 4, 8), tokenizer, options, V, 448, 0.025, "max-only", end)[0]

    assert decode_with("any").text == "one"
    got = decode_with("base")
    assert got.text == "one two three" and got.stream_tokens == [2, 1]  # "one" was the surer adapter's


def test_switch_word_keeps_a_word_with_the_stream_that_began_it(tiny, tokenizer):  # noqa: F811
    *head, tail = tokenizer.encode(" on the 4th")  # tail is "th", a piece of the word " 4"
    eot, V = tokenizer.eot, tiny.dims.n_vocab
    base = head + [tail, eot]
    adapter = head + [tokenizer.encode(" 2023")[0]] * 2 + [eot]  # a new word where the base goes on with " 4"
    options = DecodingOptions(sample_len=8, without_timestamps=True)

    class SureAfterFour(ScriptedStreams):  # the base is surer, except right after " 4"
        def _next(self):
            logits = super()._next()
            if self.t - 1 == len(head):
                logits[1] *= 2
            return logits

    def decode_with(switch):
        streams = SureAfterFour([base, adapter], [13.0, 11.0], V)
        return adml.run(streams, torch.zeros(1, 4, 8), tokenizer, options, V, 448, 0.0, "max-only", "any", switch)[0]

    assert decode_with("token").text.startswith("on the 4 2023")  # Algorithm 1: the adapter splits "4th"
    got = decode_with("word")
    assert got.text == "on the 4th" and got.stream_tokens == [len(base) - 1, 0]


def test_guard_keeps_an_adapter_from_putting_in_a_word_the_base_finds_unlikely(tiny, tokenizer):  # noqa: F811
    words = tokenizer.encode(" to exit the menu")
    eot, V = tokenizer.eot, tiny.dims.n_vocab
    base = words + [eot]
    adapter = tokenizer.encode(" do") + words[1:] + [eot]  # surer than the base of a word the base ranks low
    options = DecodingOptions(sample_len=8, without_timestamps=True)

    class BaseAlsoHears(ScriptedStreams):  # the base's runner-up is the adapter's word, except " do"
        def _next(self):
            t, logits = self.t, super()._next()
            logits[0, 0, self.scripts[1][min(t, len(self.scripts[1]) - 1)]] = 5.0 if t else -5.0
            return logits

    def decode_with(guard):
        streams = BaseAlsoHears([base, adapter], [11.0, 13.0], V)
        return adml.run(streams, torch.zeros(1, 4, 8), tokenizer, options, V, 448, 0.025, "max-only", "any",
                        "token", guard)[0]

    assert decode_with(0).text == "do exit the menu"  # Algorithm 1: the surer adapter's word
    got = decode_with(2)
    assert got.text == "to exit the menu" and got.stream_tokens == [1, len(words) - 1]  # later words: the adapter's
