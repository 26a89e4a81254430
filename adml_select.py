"""ADML's selection rule: which stream's next token the shared transcript takes (DAS paper,
Eq. 3), and the options that go with it. adml.run calls `select` once per decoding step,
then `base_guard` when the base vets the adapters' tokens, then `keep_word` when streams
may change only between words, then `base_ends` when only the base may end the transcript.

Shapes: S streams (stream 0 is the base model, 1..k the adapters), U utterances.
"""

import torch
from torch import Tensor

STRATEGIES = ("das", "max-only", "base", "most-confident", "majority", "route")  # route: adml_route.py, not `select`
ENDS = ("any", "base")  # which streams may end the transcript (`base_ends`)
SWITCHES = ("token", "word")  # where the transcript may change streams (`keep_word`)


def select(conf: Tensor, candidates: Tensor, tau: float = 0.025, strategy: str = "das") -> Tensor:
    """Which stream's token to take: conf, candidates (S, U) -> stream index (U,).

    `das` is Eq. (3). With c_0 the base's confidence, the rule fires when
    max_i c_i - c_0 >= tau (some stream is clearly surer than the base) or
    min_i c_i - c_0 <= -tau (some stream is clearly less sure). Each condition names a
    stream: the most confident one and the least confident one.
      both hold      -> the most confident stream (the paper: "prioritize the maximum");
      only max holds -> the most confident stream;
      only min holds -> the least confident stream. The paper leaves this case open. Our
                        reading: the condition that fired picks the word it names, as in
                        the max-only case; an adapter that loses confidence where the base
                        is sure flags a word its domain spells or segments differently;
      neither        -> the base (stream 0).
    Ties go to the lowest stream index, so the base wins a tie. As c_i is in (0, 1], a tau
    above 1 never fires and always gives the base; tau = 0 always takes the most confident.

    `max-only` is Eq. (3) without its min-condition: the most confident stream when it beats
    the base by tau, else the base. It is the other reading of the min-only case (the base
    keeps its word), kept so that a study can choose between the two on validation data.

    Ablations the paper compared: `base` (always stream 0), `most-confident` (argmax c_i),
    `majority` (the token most streams propose; a tie goes to the base's token if it is
    among the tied, else to the tied token proposed with the highest confidence).
    """
    if strategy == "base":
        return torch.zeros_like(candidates[0])
    most = conf.argmax(dim=0)  # first index among equals: the base wins ties
    if strategy == "most-confident":
        return most
    if strategy in ("das", "max-only"):
        c0 = conf[0]
        up = conf.max(dim=0).values - c0 >= tau
        zero = torch.zeros_like(most)
        if strategy == "max-only":
            return torch.where(up, most, zero)
        down = conf.min(dim=0).values - c0 <= -tau
        return torch.where(up, most, torch.where(down, conf.argmin(dim=0), zero))
    if strategy == "majority":
        votes = (candidates[None] == candidates[:, None]).sum(dim=1)  # (S, U): streams agreeing with s
        tied = votes == votes.max(dim=0).values
        key = torch.where(tied, conf, torch.full_like(conf, -1.0))
        key[0] = torch.where(tied[0], 2.0, -1.0)  # 2 > any confidence: the base wins its ties
        return key.argmax(dim=0)
    if strategy == "route":
        raise ValueError("strategy 'route' picks whole transcripts, not tokens: adml.make_decoder runs it "
                         "(adml_route.decode_routed)")
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; not {strategy!r}")


def base_ends(chosen: Tensor, candidates: Tensor, eot: int) -> Tensor:
    """`select`'s choice (U,) with only the base deciding where the transcript ends: where
    the base proposes end-of-text it is taken, and where the chosen adapter proposes it
    while the base does not, the base's token is taken instead. Why: the adapters were
    trained on single sentences, and on a 50-word real prompt one was surer than the base
    that the transcript had ended after four words (RESULTS.md)."""
    return torch.where((candidates[0] == eot) | (candidates.gather(0, chosen[None])[0] == eot),
                       torch.zeros_like(chosen), chosen)


def base_guard(chosen: Tensor, candidates: Tensor, base_logprobs: Tensor, k: int) -> Tensor:
    """`select`'s choice (U,) with an adapter's token taken only where it is among the base's
    k likeliest tokens (`base_logprobs`, (U, V)); elsewhere the base's token is taken. k = 0
    turns the guard off. The idea: an adapter may re-rank what the base heard, but not put
    in a word the base finds unlikely. Tried against the real-speech regression, it barely
    helped: there the base itself ranked most of the adapters' wrong words second (RESULTS.md)."""
    if k <= 0:
        return chosen
    own = candidates.gather(0, chosen[None])[0]  # (U,): the chosen stream's token
    lp = base_logprobs.gather(1, own[:, None])  # (U, 1): the base's log-probability of it
    rank = (base_logprobs > lp).sum(dim=-1)  # (U,): tokens the base finds likelier; 0 = its own pick
    return torch.where(rank < k, chosen, torch.zeros_like(chosen))


def word_pieces(tokenizer, n_vocab: int) -> Tensor:
    """(V,) bool: True for the text tokens that carry on the word before them (no leading
    space, and a letter, digit, apostrophe or a piece of a multi-byte character first:
    "th" after " 4", "storm" after " thunder"). Special tokens, punctuation and tokens
    that start with a space begin something new. Built once per tokenizer."""
    key = (id(tokenizer.encoding), n_vocab)
    if key not in _PIECES:  # the encoding is kept with its flags, so its id is never reused
        flags = torch.zeros(n_vocab, dtype=torch.bool)
        for t in range(min(tokenizer.eot, n_vocab)):
            text = tokenizer.decode([t])  # a piece of a multi-byte character decodes to U+FFFD
            flags[t] = bool(text) and (text[0].isalnum() or text[0] in "'’\ufffd")
        _PIECES[key] = (tokenizer.encoding, flags)
    return _PIECES[key][1]


_PIECES: dict = {}


def keep_word(chosen: Tensor, owner: Tensor, candidates: Tensor, pieces: Tensor) -> Tensor:
    """`select`'s choice (U,) with streams changing only between words: where the stream
    that chose the last token (`owner`, (U,)) now proposes a piece of the same word
    (`pieces`, from `word_pieces`, on the candidates' device), its token is taken. Why: each stream segments words
    into BPE tokens its own way, and a switch inside a word splices two segmentations
    ("thunder" + "s storm", "4" + " 2023" for "4th"). Eq. (3) still decides at every
    word boundary, as judged by the stream that began the word."""
    own = candidates.gather(0, owner[None])[0]  # (U,): the owner's proposal
    return torch.where(pieces[own], owner, chosen)


def check_options(tau, strategy: str, end: str, switch: str = "token", guard: int = 0) -> float:
    """tau as a float (`check_tau`); a ValueError for an unknown strategy, end or switch, or
    a guard that is not a whole number >= 0."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; not {strategy!r}")
    if end not in ENDS:
        raise ValueError(f"end must be one of {', '.join(ENDS)}; not {end!r}")
    if switch not in SWITCHES:
        raise ValueError(f"switch must be one of {', '.join(SWITCHES)}; not {switch!r}")
    check_guard(guard)
    return check_tau(tau)


def check_guard(guard) -> int:
    """guard (an int, or its digits as a string) as an int, or a ValueError that says what is wrong."""
    if isinstance(guard, str) and guard.isdigit():
        guard = int(guard)
    if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
        raise ValueError(f"guard must be a whole number >= 0 (0: off), not {guard!r}")
    return guard


def check_tau(tau) -> float:
    """tau as a float, or a ValueError that says what is wrong with it."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number, not {tau!r}") from None
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"tau must be >= 0, not {tau!r}")
    return value
