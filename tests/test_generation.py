"""The streaming detokeniser and stop strings, with the real byte-level tokenizer of the tiny
preset: text is final when emitted, multi-byte characters never split, stop strings found
across token boundaries, in linear time."""

from __future__ import annotations

import time

import pytest
import torch

from model.generation import StopMatcher, TextStream, sample_token


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer


def _stream_all(tok, text: str, stop=None, per_token=True) -> tuple[list[str], TextStream]:
    ids = tok(text, add_special_tokens=False).input_ids
    stream = TextStream(tok, stop, tok.eos_token_id)
    pieces = []
    for i in ids if per_token else []:
        pieces.append(stream.push(i))
        if stream.finish_reason:
            break
    pieces.append(stream.finish())
    return pieces, stream


def test_the_text_comes_out_whole_without_the_separator_space(tok):
    pieces, stream = _stream_all(tok, " red, a high tone")
    assert "".join(pieces) == "red, a high tone" and stream.finish_reason == "length"


def test_multi_byte_characters_are_never_split_and_bad_bytes_never_shown(tok):
    text = " café — 東京 🎧 ok"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split())  # byte-level pieces: characters span tokens
    pieces, _ = _stream_all(tok, text)
    assert "".join(pieces) == text.lstrip() and all("\ufffd" not in p for p in pieces)
    stream = TextStream(tok, [], tok.eos_token_id)
    broken = tok("é", add_special_tokens=False).input_ids[:1]  # half a character, never completed
    assert stream.push(broken[0]) == "" and stream.finish() == ""


@pytest.mark.parametrize(
    "stop, expected",
    [
        (["high"], "red, a "),
        (["a h"], "red, "),
        ([", a"], "red"),
        (["tone"], "red, a high "),
        (["zzz"], "red, a high tone"),
    ],
)
def test_stop_strings_are_found_across_tokens_and_never_emitted(tok, stop, expected):
    pieces, stream = _stream_all(tok, " red, a high tone", stop)
    assert "".join(pieces) == expected
    assert stream.finish_reason == ("length" if stop == ["zzz"] else "stop")


def test_text_that_might_become_a_stop_string_is_held_back_then_released(tok):
    stream = TextStream(tok, ["high tone!"], tok.eos_token_id)
    out = [stream.push(i) for i in tok(" a high tone", add_special_tokens=False).input_ids]
    assert "".join(out) == "a "  # "high tone" could still become the stop string
    assert stream.finish() == "high tone"


def test_stop_matching_is_linear_in_the_generation(tok):
    ids = tok(" the " * 50, add_special_tokens=False).input_ids * 4
    timings = []
    for stop_len in (16, 256):
        stream = TextStream(tok, ["the " * (stop_len // 4) + "x"] * 4, tok.eos_token_id)
        start = time.perf_counter()
        for i in ids:
            stream.push(i)
        timings.append(time.perf_counter() - start)
    assert timings[1] < 4 * timings[0] + 0.05, timings  # 16x longer stop strings, not 16x (or 256x) slower


def test_stop_matcher_finds_overlapping_prefixes():
    m = StopMatcher(["abab", "bc"])
    assert m.feed("aba") is None and m.held == 3
    assert m.feed("bx") == 1  # "abab" completes on the first character fed
    m = StopMatcher(["aab"])
    assert m.feed("aaab") == 4


def test_tiny_temperatures_are_greedy_and_never_nan():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    g = torch.Generator().manual_seed(0)
    for t in (0.0, 1e-300, 1e-6):
        assert sample_token(logits, t, 1.0, g) == 1
    assert sample_token(logits, 1.0, 1e-300, g) == 1  # top_p that small keeps the top token only


def test_one_generation_stage_streams_final_text_and_why_it_stopped(tiny):
    from model.generation import answer, generate_text

    embeds = tiny.merge_media(torch.tensor([tiny.tokenizer("USER: hi ASSISTANT:").input_ids]), None, None)[0]
    pieces = list(generate_text(tiny, embeds, 12, ignore_eos=True))
    assert pieces[-1].finish_reason == "length" and pieces[-1].tokens == 12
    assert all(p.finish_reason is None for p in pieces[:-1]) and all(p.text for p in pieces[:-1])
    text, tokens, finish = answer(tiny, embeds, 12, ignore_eos=True)
    assert (text, tokens, finish) == ("".join(p.text for p in pieces), 12, "length")  # greedy: the same


def test_the_answer_rules_every_engine_applies():
    from model.generation import AnswerText

    rules = AnswerText()
    assert [rules(t) for t in (" ", "  Hi", " there\ufffd", " ")] == ["", "Hi", " there", " "]
