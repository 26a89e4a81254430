"""Token-level ADML: Algorithm 1's loop and its selection rule (DAS paper, III-B, Eq. 3).

At every step each stream proposes its best next token next_i with confidence c_i, its
largest softmax probability, and `select` picks which stream's token the one shared
transcript takes. `run` is that loop; the streams it steps are adml.BatchedStreams (all
k + 1 streams in one batched forward) or decoders/reference.py's SequentialStreams (one
model per stream), so the batched path and the naive one differ only in how logits are made.

Rules: `das` is Eq. (3) as we read it, `max-only` its max-condition alone, and `base`,
`most-confident`, `majority` the paper's ablations. `route` (the default) is not a token
rule; decoders/route.py runs it. With end="base" only the base model may end the transcript
(`base_ends`); end="any" is Algorithm 1 as written.

Shapes: S = k + 1 streams (stream 0 is the base model, 1..k the adapters), U utterances,
V vocabulary.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from adml import BatchedStreams, encoder_output, multi_lora_modules, stack_adapters, swapped
from whisper_min.decoding import DecodingOptions, DecodingResult, LogitFilters, initial_tokens, make_results, pick
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer

STRATEGIES = ("das", "max-only", "base", "most-confident", "majority", "route")  # route: decoders/route.py
ENDS = ("any", "base")  # which streams may end the transcript (`base_ends`)


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
        raise ValueError("strategy 'route' picks whole transcripts, not tokens: decoders/route.py runs it")
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; not {strategy!r}")


def base_ends(chosen: Tensor, candidates: Tensor, eot: int) -> Tensor:
    """`select`'s choice (U,) with only the base deciding where the transcript ends: where
    the base proposes end-of-text it is taken, and where the chosen adapter proposes it
    while the base does not, the base's token is taken instead. Why: the adapters were
    trained on single sentences, and on a 50-word real prompt one was surer than the base
    that the transcript had ended after four words (RESULTS.md)."""
    return torch.where((candidates[0] == eot) | (candidates.gather(0, chosen[None])[0] == eot),
                       torch.zeros_like(chosen), chosen)


def check_options(tau, strategy: str, end: str) -> float:
    """tau as a float (`check_tau`); a ValueError for an unknown strategy or end."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; not {strategy!r}")
    if end not in ENDS:
        raise ValueError(f"end must be one of {', '.join(ENDS)}; not {end!r}")
    return check_tau(tau)


def check_tau(tau) -> float:
    """tau as a float, or a ValueError that says what is wrong with it."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number, not {tau!r}") from None
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"tau must be >= 0, not {tau!r}")
    return value


def run(streams, features: Tensor, tokenizer: Tokenizer, options: DecodingOptions, n_vocab: int,
        n_text_ctx: int, tau: float, strategy: str, end: str = "any") -> list[DecodingResult]:
    """Algorithm 1 for U utterances: every step, `select` (then `base_ends` with end="base")
    picks one stream's token, and every stream is fed that token.
    `streams` (BatchedStreams, or the reference's SequentialStreams) has `prefill(tokens)`
    and `step(token, offset)` giving every stream's next-token logits (S, U, V); all the
    rest is shared, so the two differ only there."""
    U = features.shape[0]
    start = initial_tokens(tokenizer, options)
    sample_begin = len(start)
    sample_len = options.sample_len or n_text_ctx // 2
    filters = LogitFilters(tokenizer, options, sample_begin, n_vocab)
    eot = tokenizer.eot

    tokens = torch.tensor([start] * U, device=features.device)  # (U, T0)
    logits, base_logits = streams.prefill(tokens)  # (S, U, V), (U, T0, V)
    S = logits.shape[0]
    # As in plain decoding: the base's probability of <|nospeech|> right after <|startoftranscript|>.
    no_speech_probs = base_logits[:, start.index(tokenizer.sot)].softmax(-1)[:, tokenizer.no_speech].tolist()
    sum_logprobs = torch.zeros(U, device=tokens.device)
    counts = torch.zeros(U, S, dtype=torch.long, device=tokens.device)
    rows = torch.arange(U, device=tokens.device)
    for _ in range(sample_len):
        flat = logits.reshape(S * U, -1)  # (S*U, V), stream-major like tokens.repeat(S, 1)
        filters(flat, tokens.repeat(S, 1))
        candidates = pick(flat, options.temperature).view(S, U)  # next_i for every stream
        logprobs = F.log_softmax(flat.float(), dim=-1).view(S, U, -1)  # (S, U, V)
        conf = logprobs.max(dim=-1).values.exp()  # c_i: the largest softmax probability
        chosen = select(conf, candidates, tau, strategy)  # (U,)
        if end == "base":
            chosen = base_ends(chosen, candidates, eot)
        next_tokens = candidates[chosen, rows]
        finished = tokens[:, -1] == eot
        sum_logprobs += logprobs[chosen, rows, next_tokens] * ~finished
        counts[rows, chosen] += (~finished & (next_tokens != eot)).long()
        next_tokens[finished] = eot  # finished rows keep emitting end-of-text
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        if (tokens[:, -1] == eot).all() or tokens.shape[1] >= n_text_ctx:
            break
        logits = streams.step(tokens[:, -1:], tokens.shape[1] - 1)  # (S, U, V)

    out = make_results(tokens, sum_logprobs, no_speech_probs, sample_begin, tokenizer, options.temperature)
    for r, n in zip(out, counts.tolist()):
        r.stream_tokens = n
    return out


@torch.inference_mode()
def decode(model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions = DecodingOptions(),
           audio_features: Tensor | None = None, adapters=(), tau: float = 0.025, strategy: str = "das",
           end: str = "any") -> list[DecodingResult]:
    """`whisper_min.decode` with k adapters decoded alongside the base (batched, one pass).

    adapters: Adapter objects (`.name`, `.deltas`), deltas dicts, or a StackedAdapters made
    once by `stack_adapters` (saves restacking per window). k = 0 is plain decoding exactly.
    `stream_tokens` in each result counts the tokens each stream chose (base first). With
    temperature > 0 each stream samples its candidate and Eq. (3) picks among them by the
    same confidences; the log-probability summed is the chosen stream's.
    The model's decoder modules are swapped for the duration and restored, even on error;
    do not decode with the same model object from two threads at once.
    """
    tau = check_options(tau, strategy, end)
    stack = stack_adapters(adapters, model)
    features = encoder_output(model, mel, audio_features)
    with swapped(model, multi_lora_modules(model, stack) if stack.k else {}):
        streams = BatchedStreams(model, stack.k, features)
        return run(streams, features, tokenizer, options, model.dims.n_vocab, model.dims.n_text_ctx, tau, strategy,
                   end)
