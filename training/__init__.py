"""`das.py train`: one LoRA adapter per domain on Whisper's decoder (or a full fine-tuning
baseline). train.py is the command, read in the order `main` runs: build the model, read the
data (data.py), set up what trains (methods.py), fill the encoder cache (encoder_cache.py),
then the loop (loop.py), with replay (replay.py) and checkpoints (checkpoint.py)."""
