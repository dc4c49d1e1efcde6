"""The model's last stage, generation, as every caller uses it (the command line, both
evaluators, the service's transformers engine, the benchmarks): :func:`generate_text` turns a
prompt embedding matrix into a stream of final text and a finish reason. Under it: token
sampling, and the streaming detokeniser that turns token ids into final text (stop strings
applied). :class:`AnswerText` holds the text rules every engine applies, vLLM's included.

The detokeniser decodes only a short tail of the ids for each new token (as vLLM's incremental
detokenisation does), and stop strings are matched with a Knuth-Morris-Pratt automaton per
string, fed each new character once, so a whole generation costs time linear in its length
whatever the stop strings are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Temperatures below this are greedy (vLLM's convention); dividing logits by less overflows.
GREEDY_BELOW = 1e-5
REPLACEMENT = "\ufffd"


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy at (near) temperature 0, else nucleus sampling."""
    if temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        keep[0] = True  # the top token always (a top_p below float32's range compares as 0)
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class StopMatcher:
    """Finds the first occurrence of any stop string in a stream of characters, in linear time,
    and says how many trailing characters could still be the start of one (to hold back)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.tables = [_failure(s) for s in self.stops]
        self.state = [0] * len(self.stops)  # characters of each stop string matched so far

    def feed(self, text: str) -> int | None:
        """Consumes ``text``; returns the offset in it just past the end of the first completed
        stop string, or None."""
        for offset, ch in enumerate(text):
            for k, (stop, table) in enumerate(zip(self.stops, self.tables)):
                q = self.state[k]
                while q and stop[q] != ch:
                    q = table[q - 1]
                if stop[q] == ch:
                    q += 1
                if q == len(stop):
                    return offset + 1
                self.state[k] = q
        return None

    @property
    def held(self) -> int:
        """Trailing characters that might still become a stop string."""
        return max(self.state, default=0)


def _failure(pattern: str) -> list[int]:
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class AnswerText:
    """The rules for an answer's text, whichever engine detokenises it: no separator space
    before the answer (the template ends with "ASSISTANT:") and no U+FFFD from bytes that never
    form a character."""

    def __init__(self):
        self.started = False

    def __call__(self, text: str) -> str:
        text = text.replace(REPLACEMENT, "")
        if not self.started:
            text = text.lstrip(" ")
            self.started = bool(text)
        return text


class TextStream:
    """Token ids in, final text out: no half multi-byte character (and no U+FFFD from invalid
    bytes) and nothing that might still turn into a stop string is ever emitted; the separator
    space the template puts before an answer is dropped."""

    def __init__(self, tokenizer, stop: list[str] | None = None, eos_token_id: int | None = None):
        self.tokenizer = tokenizer
        self.eos = eos_token_id
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already read
        self.read = 0
        self.matcher = StopMatcher(stop or [])
        self.pending = ""  # read, not yet emitted (might be a stop string's start)
        self.answer = AnswerText()
        self.finish_reason: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The text that became final with this token ("" if none)."""
        if self.finish_reason:
            return ""
        if token == self.eos:
            self.finish_reason = "stop"
            return self._emit(self._tail(final=True), everything=True)
        self.ids.append(token)
        return self._emit(self._tail(final=False))

    def finish(self) -> str:
        """At max_tokens: whatever is held back is final now."""
        if self.finish_reason:
            return ""
        self.finish_reason = "length"
        return self._emit(self._tail(final=True), everything=True)

    def _tail(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if after.endswith(REPLACEMENT) and not final:
            return ""  # half a character: wait for the rest
        new = after[len(before) :] if after.startswith(before) else after
        self.prefix, self.read = self.read, len(self.ids)
        return new

    def _emit(self, new: str, everything: bool = False) -> str:
        new = self.answer(new)
        end = self.matcher.feed(new)
        if end is not None:
            self.finish_reason = "stop"
            text = self.pending + new[:end]
            stop_len = next(len(s) for s in self.matcher.stops if text.endswith(s))
            self.pending = ""
            return text[: len(text) - stop_len]
        text = self.pending + new
        keep = 0 if everything else min(self.matcher.held, len(text))
        self.pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]


@dataclass
class TextDelta:
    """A piece of the answer: text that became final, tokens generated so far, and on the last
    piece why generation stopped ("stop": EOS or a stop string; "length": max_new_tokens)."""

    text: str
    tokens: int
    finish_reason: str | None = None


def generate_text(
    model,
    prompt_embeds: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    ignore_eos: bool = False,
) -> Iterator[TextDelta]:
    """Generates from a prompt embedding matrix ``(T, H)`` (:func:`model.pipeline.prompt_embeds`)
    and detokenises as it goes: pieces of final text, the last one with its finish reason.
    Closing the iterator stops the work. ``ignore_eos`` generates ``max_new_tokens`` whatever
    (benchmarks)."""
    eos = model.tokenizer.eos_token_id
    stream = TextStream(model.tokenizer, stop, None if ignore_eos else eos)
    tokens = model.generate(
        prompt_embeds,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=None if seed is None else seed % 2**64,
        eos_token_id=-1 if ignore_eos else eos,
    )
    count = 0
    try:
        with torch.inference_mode():
            for token in tokens:
                count += 1
                text = stream.push(token)
                if stream.finish_reason:
                    yield TextDelta(text, count, stream.finish_reason)
                    return
                if text:
                    yield TextDelta(text, count)
        yield TextDelta(stream.finish(), count, stream.finish_reason)
    finally:
        tokens.close()


def answer(model, prompt_embeds: torch.Tensor, max_new_tokens: int, **sampling) -> tuple[str, int, str]:
    """The whole answer of :func:`generate_text`: (text, tokens generated, finish reason)."""
    text, last = [], TextDelta("", 0)
    for last in generate_text(model, prompt_embeds, max_new_tokens, **sampling):
        text.append(last.text)
    return "".join(text), last.tokens, last.finish_reason
