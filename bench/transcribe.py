"""Real-time factor of whisper_min against openai-whisper: same clips, same weights, same
thread count, one process. Prints each pipeline's RTF and the ratio ours / reference, and
where whisper_min's time goes (encoder vs decoder steps).

    python bench/transcribe.py [--model base] [--threads 2] [--repeat 2]
"""

import argparse
import dataclasses
import glob
import time

import torch

import whisper_min
from whisper_min import DecodingOptions, decode, load_audio, log_mel_spectrogram, pad_or_trim


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base", help="embedded model name or model directory")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both implementations")
    ap.add_argument("--repeat", type=int, default=2, help="timed passes over the clips (after one warm-up)")
    ap.add_argument("--clips", default="/usr/share/pocketsphinx/test/data/*/*.wav", help="glob of audio files")
    args = ap.parse_args()

    import whisper  # the reference, test-only: bash tests/setup.sh

    torch.set_num_threads(args.threads)
    model = whisper_min.load_model(args.model)
    tokenizer = whisper_min.get_tokenizer(args.model)
    ref = whisper.model.Whisper(whisper.model.ModelDimensions(**dataclasses.asdict(model.dims)))
    ref.load_state_dict(model.state_dict())
    ref.eval()
    clips = [load_audio(p) for p in sorted(glob.glob(args.clips))]
    seconds = sum(len(a) for a in clips) / 16000
    print(f"{len(clips)} clips, {seconds:.1f} s of audio, model {args.model}, {args.threads} threads")

    def ours_transcribe(audio):
        return whisper_min.transcribe(model, audio, tokenizer)["text"]

    def ref_transcribe(audio):
        return whisper.transcribe(ref, audio, language="en", fp16=False, condition_on_previous_text=False)["text"]

    split = {"encoder": 0.0, "decoder": 0.0}

    def ours_decode(audio):
        mel = log_mel_spectrogram(pad_or_trim(torch.from_numpy(audio)))
        t0 = time.perf_counter()
        with torch.inference_mode():
            features = model.embed_audio(mel[None])
        t1 = time.perf_counter()
        text = decode(model, mel, tokenizer, DecodingOptions(without_timestamps=True), audio_features=features)[0].text
        split["encoder"] += t1 - t0
        split["decoder"] += time.perf_counter() - t1
        return text

    def ref_decode(audio):
        mel = whisper.log_mel_spectrogram(pad_or_trim(torch.from_numpy(audio)))
        return whisper.decode(ref, mel, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)).text

    pipelines = {"transcribe": (ours_transcribe, ref_transcribe), "decode (no timestamps)": (ours_decode, ref_decode)}
    for name, (ours, theirs) in pipelines.items():
        times = {"whisper_min": 0.0, "openai-whisper": 0.0}
        for rep in range(args.repeat + 1):
            # alternate clip by clip so that machine load drifts hit both the same way
            for audio in clips:
                for label, fn in (("whisper_min", ours), ("openai-whisper", theirs)):
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        fn(audio)
                    if rep > 0:  # the first pass warms up both
                        times[label] += time.perf_counter() - t0
        rtf = {k: v / (seconds * args.repeat) for k, v in times.items()}
        print(f"{name:24s} RTF whisper_min {rtf['whisper_min']:.4f}  openai-whisper {rtf['openai-whisper']:.4f}  "
              f"ratio {rtf['whisper_min'] / rtf['openai-whisper']:.3f}x")
    total = split["encoder"] + split["decoder"]
    print(f"whisper_min decode time: encoder {100 * split['encoder'] / total:.0f}%, "
          f"decoder steps {100 * split['decoder'] / total:.0f}%")


if __name__ == "__main__":
    main()
