"""How k + 1 streams (the base model and k adapters, adml.py) become transcripts.

    decode_fn = make_decoder(model, ["music.st", "sports.st"], strategy="route", tau=0.01)
    whisper_min.transcribe(model, audio, tokenizer, decode_fn=decode_fn)

- route.py: the default; each utterance keeps one stream's whole transcript.
- rules.py: token-level ADML, Algorithm 1; the paper's Eq. (3), `max-only` and the ablations.
- cuda_graphs.py: on a GPU, either one with its steps replayed from CUDA graphs.
- reference.py: the naive per-adapter loops the tests hold the batched code to, and plain
  decoding with one adapter merged in (what one adapter file runs).
"""

from adml import load_stack
from decoders.cuda_graphs import GraphedDecoder
from decoders.reference import decode_merged
from decoders.route import decode_routed
from decoders.rules import ENDS, STRATEGIES, check_options, check_tau, decode  # noqa: F401 (the package's API)
from whisper_min.decoding import DecodingOptions
from whisper_min.model import Whisper


def make_decoder(model: Whisper, paths, tau: float = 0.025, strategy: str = "das", end: str = "any",
                 cuda_graphs: bool = False):
    """Adapter files -> a `decode_fn(model, mel, tokenizer, options, audio_features=None)` for
    `whisper_min.transcribe`, with `.adapter_names`. Loads each adapter once (lora.load_adapter
    raises for a file made for another base model); raises ValueError for a file given twice,
    or a bad tau, strategy or end. One file is plain decoding with that adapter merged in: with
    one adapter there is nothing to choose between. cuda_graphs=True, with the model on a GPU:
    the steps are replayed from CUDA graphs (the same tokens, a fraction of the launches)."""
    tau = check_options(tau, strategy, end)
    stack = load_stack(model, paths)
    if stack.k == 1:
        def decode_fn(model, mel, tokenizer, options=DecodingOptions(), audio_features=None):
            return decode_merged(model, mel, tokenizer, options, audio_features, stack)
    elif cuda_graphs and model.device.type == "cuda":
        decode_fn = GraphedDecoder(model, stack, tau=tau, strategy=strategy, end=end)
    elif strategy == "route":  # whole transcripts, one stream each (end is a token rule)
        def decode_fn(model, mel, tokenizer, options=DecodingOptions(), audio_features=None):
            return decode_routed(model, mel, tokenizer, options, audio_features, stack, tau)
    else:
        def decode_fn(model, mel, tokenizer, options=DecodingOptions(), audio_features=None):
            return decode(model, mel, tokenizer, options, audio_features, adapters=stack, tau=tau, strategy=strategy,
                          end=end)

    decode_fn.adapter_names = stack.names
    return decode_fn
