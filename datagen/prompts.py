"""Every prompt the pipeline sends, in the order it sends them (paper III-A, CodecLM).

Phase 1 turns a sampled seed (usecase, skill, persona, instruction) into
metadata keywords ("encode"), then turns the metadata into one tailored
instruction ("decode"). Phase 2 sends that instruction and asks for the
in-domain texts themselves: by default things a user would say to a voice
assistant. A domain spec's "style" names other texts instead ("prompts that a
phone system plays to a caller", "notes a doctor dictates"); it replaces the
request wording in phases 1b and 2, and the system prompt's "voice assistant".

The prompts are plain and short on purpose: they must work with a 135M model
in the tests as well as with a 70B model at scale. Each builder returns the
`messages` list of a chat-completions request.
"""
from __future__ import annotations

SYSTEM = "You are a helpful assistant that writes realistic data for a voice assistant."
STYLED_SYSTEM = "You are a helpful assistant that writes realistic data for speech recognition."

# Each prompt ends with one format example taken from the domain spec's optional
# "examples": small models (SmolLM2-135M) ignore format instructions without one.
# A spec without examples sends no example.


def _example(text: str | None) -> str:
    return f" Example: {text}" if text else ""


def _messages(user: str, style: str | None) -> list[dict]:
    return [{"role": "system", "content": STYLED_SYSTEM if style else SYSTEM}, {"role": "user", "content": user}]


def metadata_messages(domain: str, seed: dict[str, str], example: str | None = None,
                      style: str | None = None) -> list[dict]:
    """Phase 1a (encode): seed fields -> a few specific keywords (names, titles, places)."""
    user = (f"Domain: {domain}. Topic: {seed['skills']}. Use case: {seed['usecase']}. "
            "List 5 well-known names or titles for this topic, separated by commas." + _example(example))
    return _messages(user, style)


def instruction_messages(domain: str, seed: dict[str, str], metadata: str, example: str | None = None,
                         style: str | None = None) -> list[dict]:
    """Phase 1b (decode): metadata keywords -> one tailored instruction."""
    user = (f"Base instruction: {seed['instruction']}. Rewrite it as one specific instruction "
            f"that asks for {style or 'questions'} about {domain}, mentioning {metadata}, "
            f"written for a {seed['persona']}. Answer with the instruction only." + _example(example))
    return _messages(user, style)


def texts_messages(domain: str, instruction: str, metadata: str, n: int, example: str | None = None,
                   style: str | None = None) -> list[dict]:
    """Phase 2: the tailored instruction -> `n` texts: chatbot-style user utterances, or `style`."""
    if style:
        user = (f"{instruction}\nGenerate {n} {style}, related to {domain} about {metadata}. "
                "One per line, in English, each as it would be spoken." + _example(example))
    else:
        user = (f"{instruction}\nGenerate {n} chatbot questions or requests related to {domain} "
                f"about {metadata}, as a user would say them to a voice assistant. "
                "One per line, in English, no answers." + _example(example))
    return _messages(user, style)


def fallback_instruction(domain: str, seed: dict[str, str]) -> str:
    """Used when phase 1 yields nothing usable, so phase 2 still has a seed-based prompt."""
    return f"{seed['instruction']}, asked by a {seed['persona']}, about {seed['skills']} ({domain})."
