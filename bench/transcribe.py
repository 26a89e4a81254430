"""Real-time factor of whisper_min against openai-whisper: same clips, same weights, same
thread count, one process. Prints each pipeline's RTF and the ratio ours / reference, and
where whisper_min's time goes (encoder vs decoder steps).

    python bench/transcribe.py [--model base] [--threads 2] [--repeat 2]
    python bench/transcribe.py --random-weights base --device cuda   # no weights needed

With --random-weights both implementations get the same random weights of that size and
decode exactly --sample-len tokens per clip (no end-of-text), so the timing compares the
same computation where the embedded weights are not installed (e.g. a GPU machine).
"""

import argparse
import dataclasses
import glob
import time

import numpy as np
import torch

import whisper_min
from whisper_min import DecodingOptions, decode, load_audio, log_mel_spectrogram, pad_or_trim


RANDOM_DIMS = {
    "tiny": dict(n_audio_state=384, n_audio_head=6, n_audio_layer=4),
    "base": dict(n_audio_state=512, n_audio_head=8, n_audio_layer=6),
    "small": dict(n_audio_state=768, n_audio_head=12, n_audio_layer=12),
}


def random_model(size: str) -> whisper_min.Whisper:
    d = RANDOM_DIMS[size]
    dims = whisper_min.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_vocab=51865, n_text_ctx=448,
                                       n_text_state=d["n_audio_state"], n_text_head=d["n_audio_head"],
                                       n_text_layer=d["n_audio_layer"], **d)
    torch.manual_seed(0)
    model = whisper_min.Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def build_tokenizer(path: str | None):
    """The shipped vocabulary: from the installed base model, or a tokenizer.json given."""
    if path is None:
        return whisper_min.get_tokenizer("base")
    from whisper_min.tokenizer import get_tokenizer

    return get_tokenizer(path, 51865)


def load(args):
    """(whisper_min model, openai-whisper model with the same weights, tokenizer, clips)."""
    import whisper

    if args.random_weights:
        model, tokenizer = random_model(args.random_weights), build_tokenizer(args.tokenizer)
        clips = [np.random.default_rng(i).standard_normal(16000 * (3 + i)).astype(np.float32) * 0.1 for i in range(6)]
    else:
        model, tokenizer = whisper_min.load_model(args.model), whisper_min.get_tokenizer(args.model)
        clips = [load_audio(p) for p in sorted(glob.glob(args.clips))]
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**dataclasses.asdict(model.dims)))
    ref.load_state_dict(model.state_dict())
    return model.to(args.device), ref.to(args.device).eval(), tokenizer, clips


def compare(name: str, ours, theirs, clips, repeat: int) -> None:
    """Time both pipelines on every clip, alternating clip by clip so that drifts in the
    machine's load hit both the same way; print their RTFs and the ratio."""
    times = {"whisper_min": 0.0, "openai-whisper": 0.0}
    for rep in range(repeat + 1):
        for audio in clips:
            for label, fn in (("whisper_min", ours), ("openai-whisper", theirs)):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    fn(audio)
                if rep > 0:  # the first pass warms up both
                    times[label] += time.perf_counter() - t0
    rtf = {k: v / (sum(len(a) for a in clips) / 16000 * repeat) for k, v in times.items()}
    print(f"{name:24s} RTF whisper_min {rtf['whisper_min']:.4f}  openai-whisper {rtf['openai-whisper']:.4f}  "
          f"ratio {rtf['whisper_min'] / rtf['openai-whisper']:.3f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", help="embedded model name or model directory")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both implementations")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes over the clips (after one warm-up)")
    ap.add_argument("--clips", default="/usr/share/pocketsphinx/test/data/*/*.wav", help="glob of audio files")
    ap.add_argument("--random-weights", choices=list(RANDOM_DIMS), help="random weights of this size instead")
    ap.add_argument("--sample-len", type=int, default=24, help="tokens per clip with --random-weights")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tokenizer", help="tokenizer.json for --random-weights where the weights are not installed")
    args = ap.parse_args()

    import whisper  # the reference, test-only: bash tests/setup.sh

    torch.set_num_threads(args.threads)
    model, ref, tokenizer, clips = load(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    seconds = sum(len(a) for a in clips) / 16000
    name = f"random {args.random_weights}" if args.random_weights else args.model
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, model {name}, {args.threads} threads, {args.device}")
    sample_len = args.sample_len if args.random_weights else None
    # random weights: never stop early, so both decode exactly sample_len tokens
    suppress = "-1" if not args.random_weights else f"-1,{tokenizer.eot}"

    def ours_transcribe(audio):
        return whisper_min.transcribe(model, audio, tokenizer)["text"]

    def ref_transcribe(audio):
        return whisper.transcribe(ref, audio, language="en", fp16=False, condition_on_previous_text=False)["text"]

    split = {"encoder": 0.0, "decoder": 0.0}

    def ours_decode(audio):
        mel = log_mel_spectrogram(pad_or_trim(torch.from_numpy(audio)), device=args.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            features = model.embed_audio(mel[None])
            sync()
        t1 = time.perf_counter()
        options = DecodingOptions(without_timestamps=True, sample_len=sample_len, suppress_tokens=suppress)
        tokens = decode(model, mel, tokenizer, options, audio_features=features)[0].tokens
        sync()
        split["encoder"] += t1 - t0
        split["decoder"] += time.perf_counter() - t1
        return tokens

    def ref_decode(audio):
        mel = whisper.log_mel_spectrogram(pad_or_trim(torch.from_numpy(audio)), device=args.device)
        options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, sample_len=sample_len,
                                          suppress_tokens=suppress)
        tokens = whisper.decode(ref, mel, options).tokens
        sync()
        return tokens

    pipelines = {"decode (no timestamps)": (ours_decode, ref_decode)}
    if not args.random_weights:
        pipelines["transcribe"] = (ours_transcribe, ref_transcribe)
    same = [ours_decode(a) == ref_decode(a) for a in clips]
    print(f"identical greedy tokens on {sum(same)}/{len(same)} clips")
    for name, (ours, theirs) in pipelines.items():
        compare(name, ours, theirs, clips, args.repeat)
    total = split["encoder"] + split["decoder"]
    print(f"whisper_min decode time: encoder {100 * split['encoder'] / total:.0f}%, "
          f"decoder steps {100 * split['decoder'] / total:.0f}%")


if __name__ == "__main__":
    main()
