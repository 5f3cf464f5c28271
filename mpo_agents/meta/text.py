"""Clean-up of meta-judge prose before it is stored or fed to the next stage."""

from __future__ import annotations

import re


def collapse_repeats(text: str) -> str:
    """Drop repeated sentences and paragraphs (small models loop on one line until max_tokens), keeping the
    first occurrence in order, so a looping analysis does not crowd the rewrite prompt."""
    seen: set[str] = set()
    kept: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        sentences = []
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph.strip()):
            key = re.sub(r"\W+", " ", sentence).strip().lower()
            if key and key not in seen:
                seen.add(key)
                sentences.append(sentence)
        if sentences:
            kept.append(" ".join(sentences))
    return "\n\n".join(kept)
