"""Every prompt the pipeline sends, in the order it sends them (paper III-A, CodecLM).

Phase 1 turns a sampled seed (usecase, skill, persona, instruction) into
metadata keywords ("encode"), then turns the metadata into one tailored
instruction ("decode"). Phase 2 sends that instruction and asks for the
in-domain texts themselves: things a user would say to a voice assistant.

The prompts are plain and short on purpose: they must work with a 135M model
in the tests as well as with a 70B model at scale. Each builder returns the
`messages` list of a chat-completions request.
"""
from __future__ import annotations

SYSTEM = "You are a helpful assistant that writes realistic data for a voice assistant."


def metadata_messages(domain: str, seed: dict[str, str]) -> list[dict]:
    """Phase 1a (encode): seed fields -> a short list of specific keywords."""
    user = (
        f"Domain: {domain}\n"
        f"Use case: {seed['usecase']}\n"
        f"Skill: {seed['skills']}\n"
        f"User persona: {seed['persona']}\n"
        "List 5 specific keywords for this (names, titles, places, topics), "
        "separated by commas. Answer with the keywords only."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def instruction_messages(domain: str, seed: dict[str, str], metadata: str) -> list[dict]:
    """Phase 1b (decode): metadata keywords -> one tailored instruction."""
    user = (
        f"Base instruction: {seed['instruction']}\n"
        f"Persona: {seed['persona']}\n"
        f"Keywords: {metadata}\n"
        f"Rewrite the base instruction as one specific sentence about {domain} "
        "that mentions some of the keywords and the persona. "
        "Answer with the sentence only."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def texts_messages(domain: str, instruction: str, n: int) -> list[dict]:
    """Phase 2: the tailored instruction -> `n` chatbot-style user utterances."""
    user = (
        f"{instruction}\n"
        f"Write {n} different short questions or requests about {domain} that a user "
        "would say out loud to a voice assistant. One per line, in English, "
        "at most 20 words each, no numbering, no answers."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def fallback_instruction(domain: str, seed: dict[str, str]) -> str:
    """Used when phase 1 yields nothing usable, so phase 2 still has a seed-based prompt."""
    return f"{seed['instruction']}, asked by a {seed['persona']}, about {seed['skills']} ({domain})."
