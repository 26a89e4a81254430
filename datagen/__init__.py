"""Synthetic in-domain speech data for DAS (paper Section III-A).

llm.py      OpenAI-compatible chat client (stdlib urllib, retries in net.py)
prompts.py  every prompt of the two-phase, CodecLM-style pipeline
clean.py    LLM answer -> kept texts, dropped ones with a reason
verbalise.py digits and symbols -> words, so TTS audio says the manifest text
tts.py      espeak-ng, flite, festival, piper and HTTP speech behind one interface
store.py    the resumable output folder (manifest, rejects, audio)
generate.py `das.py generate`: add_arguments(parser) and main(args)
domains/    shipped domain specs: music, weather, sports
"""
