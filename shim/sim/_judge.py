"""The simulator's judge: it answers a judge task from the drift it injected itself.

Every output the simulator drifted is remembered (a fingerprint of its content, the
latest 100,000). Asked to compare answers A and B (a prompt made by
:func:`shim.comparators.judge_prompt`), the judge knows the truth: the answer it did
not drift wins over one it did; two alike are a tie. A profile's ``judge_bias`` is a
judge that leans to the first answer: that share of its verdicts says ``A`` whatever
the answers, which is what a both-orders share measures as position bias.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import OrderedDict
from typing import Any

from shim.comparators import judged_answers

__all__ = ["DriftMemory", "fingerprint", "verdict"]

_SPACE = re.compile(r"\s+")


def fingerprint(output: Any) -> str:
    """An output's content, however it travels: JSON (a value, or JSON in text)
    canonical, other text with its whitespace collapsed."""
    value = output
    if isinstance(output, str):
        try:
            value = json.loads(output)
        except ValueError:
            return _SPACE.sub(" ", output).strip()
        if isinstance(value, str):
            return _SPACE.sub(" ", value).strip()
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class DriftMemory:
    """The fingerprints of the latest ``size`` drifted outputs."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, output: Any) -> None:
        key = fingerprint(output)
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def __contains__(self, output: object) -> bool:
        key = fingerprint(output)
        with self._lock:
            return key in self._seen


def verdict(prompt: str, drifted: DriftMemory, bias: float, rng: random.Random) -> str:
    """The judge's answer to ``prompt``: ``{"winner": "A" | "B" | "tie"}`` as text. A
    prompt that holds no two answers is a tie."""
    if bias and rng.random() < bias:
        winner = "A"
    else:
        answers = judged_answers(prompt)
        winner = "tie"
        if answers is not None:
            a_drifted, b_drifted = (answer in drifted for answer in answers)
            if a_drifted != b_drifted:
                winner = "B" if a_drifted else "A"
    return json.dumps({"winner": winner})
