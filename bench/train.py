"""Training throughput with and without the encoder-output cache, in one process.

    python bench/train.py [--model tiny.en] [--data manifest.jsonl] [--device cuda] [--epochs 2]

Runs `das.py train` (training/train.py) three times on the same data: with the encoder on
every batch (--no-encoder-cache), then with a cold cache (the one-off encoding pass, then
training from it), then with the warm cache. Rates are utterances per second of the training loop as its
progress line reports them; the cached run's first epoch also pays the encoding pass.
Printed: utt/s per epoch both ways, their ratio, and the ratio over the paper's 10 epochs.
The machine may be shared: only the ratio from one run means anything.
"""

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training import train  # noqa: E402

CLIPS = [Path("/usr/share/pocketsphinx/test/data/librivox"), Path("/usr/share/pocketsphinx/test/data/cards")]


def default_manifest(folder: Path) -> Path:
    """The pocketsphinx test clips (real speech, 1-7 s), with their transcripts."""
    rows = []
    for listing in [CLIPS[0] / "transcription", CLIPS[1] / "cards.transcription"]:
        for line in listing.read_text().splitlines():
            text, name = re.match(r"<s> (.*) </s> \((.*)\)", line).groups()
            audio = listing.parent / f"{name}.wav"
            rows.append({"audio": str(audio), "text": " ".join(text.split()), "duration": sf.info(audio).duration})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def run(argv: list[str]) -> tuple[float, float]:
    """(training-loop utt/s, seconds spent filling the cache) of one `train.main` run."""
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train.main(parser.parse_args(argv))
    log = err.getvalue()
    if code != 0:
        sys.exit(f"train failed:\n{log}")
    rate = float(re.findall(r" ([0-9.]+) utt/s", log)[-1])
    fill = re.search(r"encoder cache: .* ([0-9.]+) s, in", log)
    return rate, float(fill.group(1)) if fill else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny.en", help="'base', 'tiny.en' or a model directory")
    p.add_argument("--data", help="manifest.jsonl (default: the pocketsphinx test clips)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--epochs", type=float, default=2, help="epochs per measured run")
    p.add_argument("--batch-size", type=int, default=8, help="batch size")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or str(default_manifest(tmp))
        n = sum(1 for line in Path(data).read_text().splitlines() if line.strip())
        common = ["--data", data, "--model", args.model, "--batch-size", str(args.batch_size), "--epochs",
                  str(args.epochs), "--lr", "1e-5", "--progress-every", "1e9", "--cache-dir", str(tmp / "cache"),
                  "--checkpoint-every", "1000000"] + (["--device", args.device] if args.device else [])
        plain, _ = run(common + ["--out", str(tmp / "a.st"), "--no-encoder-cache"])
        cold, fill = run(common + ["--out", str(tmp / "b.st")])
        warm, _ = run(common + ["--out", str(tmp / "c.st")])
    cached = max(cold, warm)  # both read the cache in the loop; take the less disturbed one
    first_epoch = n / (fill + n / cached)
    ten = (10 * n / plain) / (fill + 10 * n / cached)
    print(f"model {args.model}, {n} utterances, batch {args.batch_size}")
    print(f"encoder on every batch:   {plain:8.1f} utt/s per epoch")
    print(f"encoder cache:            {cached:8.1f} utt/s per epoch after the first "
          f"(first epoch {first_epoch:.1f} utt/s with the {fill:.1f} s encoding pass)")
    print(f"speed-up per cached epoch: {cached / plain:.2f}x; over 10 epochs: {ten:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
