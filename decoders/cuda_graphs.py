"""ADML's decoding steps replayed from CUDA graphs (GPU only; everything else is adml.py).

Why: on a GPU, one greedy step for one utterance is a few hundred small kernels, and the
CPU's work of launching them takes longer than the GPU's work of running them. On an H100,
eager ADML with 3 adapters used 1.7% more GPU time than the base model but 70% more wall
time, because it launches twice the kernels (RESULTS.md, Table VI). A CUDA graph records a
step's kernels once; replaying it is one launch.

A graph replays fixed kernels on fixed memory, so:
- there is one graph per position `offset`, because self-attention reads cache[:offset + 1],
  a different shape at each position. Each is recorded the first time a decode reaches that
  position and replayed for every later window;
- every window reuses the same tensors: the token in, the logits out, the KV cache and the
  cross-attention keys/values, which `BatchedStreams.load` overwrites in place.
The start tokens (the prefill) and the selection rule between steps stay eager.

    decode_fn = GraphedDecoder(model, adapters, tau=0.01, strategy="route")
    decode_fn(model, mel, tokenizer, options)     # what route.decode_routed returns, far fewer launches

A token-level strategy gives what rules.decode gives, the same way.

k = 0 adapters is the base model alone through the same loop. On a CPU, or with graphs=False,
the same objects run eagerly (that is how the tests check the buffer reuse).
"""

import torch
from torch import Tensor

from adml import BatchedStreams, encoder_output, multi_lora_modules, stack_adapters, swapped
from decoders.route import route, run_streams
from decoders.rules import check_options, run
from whisper_min.decoding import DecodingOptions, DecodingResult
from whisper_min.model import Whisper
from whisper_min.tokenizer import Tokenizer


class GraphedSteps:
    """`streams.step(token, offset)` replayed from one CUDA graph per offset; `prefill` as is."""

    def __init__(self, streams: BatchedStreams, graphs: bool = True):
        self.streams, self.use_graphs = streams, graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def prefill(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        return self.streams.prefill(tokens)

    def step(self, token: Tensor, offset: int) -> Tensor:
        """token (U, 1), or one per stream (S*U, 1) for routing -> logits (S, U, V). A graph is
        recorded for one token shape: a decoder keeps to one rule. The logits are the graph's
        own output tensor: valid until the next replay at this offset, the next window's."""
        if not self.use_graphs:
            return self.streams.step(token, offset)
        if offset not in self.graphs:
            self.graphs[offset] = self._record(token, offset)
        graph, token_in, logits = self.graphs[offset]
        token_in.copy_(token)
        graph.replay()
        return logits

    def _record(self, token: Tensor, offset: int):
        token_in = token.clone()  # the graph reads its input from here
        # One eager run on a side stream first, as PyTorch's capture requires (cuBLAS and
        # the allocator set themselves up there). It writes the same keys/values at
        # `offset` that the replay below writes again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.streams.step(token_in, offset)
        torch.cuda.current_stream().wait_stream(side)
        # Each graph gets its own memory pool (its temporaries and logits): safe whatever order
        # the positions replay in, at a cost of a few MB per position (not measured; a pool
        # shared by all positions would cut it).
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels; runs nothing
            logits = self.streams.step(token_in, offset)
        return graph, token_in, logits


class GraphedDecoder:
    """A decode_fn (as `decoders.make_decoder` returns) that keeps its streams, buffers and
    graphs from one window to the next. All windows must have the same batch size U; a
    window with another U starts over (new buffers, graphs recorded again)."""

    def __init__(self, model: Whisper, adapters=(), tau: float = 0.025, strategy: str = "das", end: str = "any",
                 graphs: bool = True):
        self.rule = dict(tau=check_options(tau, strategy, end), strategy=strategy, end=end)
        self.stack = stack_adapters(adapters, model)
        self.modules = multi_lora_modules(model, self.stack) if self.stack.k else {}
        self.graphs = graphs and model.device.type == "cuda"
        self.steps: GraphedSteps | None = None

    @torch.inference_mode()
    def __call__(self, model: Whisper, mel: Tensor, tokenizer: Tokenizer, options: DecodingOptions = DecodingOptions(),
                 audio_features: Tensor | None = None) -> list[DecodingResult]:
        audio_features = encoder_output(model, mel, audio_features)
        with swapped(model, self.modules):
            if self.steps is None or self.steps.streams.U != audio_features.shape[0]:
                self.steps = GraphedSteps(BatchedStreams(model, self.stack.k, audio_features), self.graphs)
            else:
                self.steps.streams.load(audio_features)
            if self.rule["strategy"] == "route":  # every stream its own tokens, then one stream per utterance
                streams = run_streams(self.steps, audio_features, tokenizer, options, model.dims.n_vocab,
                                      model.dims.n_text_ctx)
                return route(streams, self.rule["tau"])
            return run(self.steps, audio_features, tokenizer, options, model.dims.n_vocab, model.dims.n_text_ctx,
                       **self.rule)
