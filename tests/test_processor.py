import time

import numpy as np
import pytest
import torch

from model import AVChatProcessor, ContextLengthError, pipeline
from model.errors import TooManyMessages
from model.pipeline import MediaTensors, decode, preprocess, prompt
from model.presets import phi2_config, tiny_config
from model.processor import IGNORE_INDEX, Block


def _chat(proc, messages, frames=None, audio=None, modalities=None, max_new_tokens=0, add_generation_prompt=True):
    """preprocess + prompt of raw frames / audio (what the processor's two halves do)."""
    tensors = MediaTensors(
        proc.pixel_values(frames) if frames is not None else None,
        proc.audio_features(audio) if audio is not None else None,
    )
    has_media = frames is not None or audio is not None
    return tensors, prompt(
        proc, messages, tensors if has_media else None, modalities, max_new_tokens, add_generation_prompt
    )


@pytest.mark.parametrize("make", [tiny_config, phi2_config], ids=["tiny", "phi2"])
def test_presets_give_the_real_token_counts(make):
    config = make()
    assert config.video_tokens == 829 and config.audio_tokens == 64
    assert config.num_frames == 100 and config.patches_per_frame == 729
    assert config.context_length == 2048 and config.vision_feature_layer == -2
    assert config.audio_config.num_mel_bins == 80 and config.audio_config.max_source_positions * 2 == 3000


def test_phi2_preset_names_the_real_components():
    config = phi2_config()
    assert (config.vision_tower, config.audio_tower, config.llm) == (
        "google/siglip-so400m-patch14-384",
        "openai/whisper-small",
        "microsoft/phi-2",
    )
    assert config.hidden_size == 2560 and config.vision_config.hidden_size == 1152
    assert config.audio_config.d_model == 768 and config.text_config.vocab_size == 51200


def test_every_real_clip_goes_through_the_processor(tiny, media_files):
    proc = tiny.processor
    for path in media_files:
        media = decode(str(path), tiny.config)
        tensors = preprocess(proc, media)
        p = prompt(proc, [{"role": "user", "content": "What happens?"}], tensors)
        assert p.counts["audio"] == (64 if media.audio is not None else 0), path.name
        assert p.counts["video"] == (829 if media.frames is not None else 0), path.name
        if media.frames is not None:
            assert tensors.video.shape == (len(media.frames.frames), 3, 384, 384)
            assert -1.0 <= float(tensors.video.min()) <= float(tensors.video.max()) <= 1.0
        if media.audio is not None:
            assert tensors.audio.shape == (1, 80, 3000)  # one 30 s window: a one-window model
        assert len(p.ids) == sum(p.counts.values())


def test_the_processor_loads_alone_from_a_checkpoint_folder(tiny):
    proc = AVChatProcessor.from_pretrained(tiny.source)
    messages = [{"role": "user", "content": "What do you hear?"}]
    media = MediaTensors(None, torch.zeros(80, 3000))
    assert prompt(proc, messages, media).ids == prompt(tiny.processor, messages, media).ids
    assert proc.video_token_id == tiny.config.video_token_id


def test_pixel_values_use_mean_and_std_one_half(tiny):
    frames = np.zeros((2, 384, 384, 3), dtype=np.uint8)
    frames[1] = 255
    values = tiny.processor.pixel_values(frames)
    assert values.shape == (2, 3, 384, 384)
    assert torch.all(values[0] == -1.0) and torch.all(values[1] == 1.0)
    # Other sizes are resized to the encoder's.
    assert tiny.processor.pixel_values(np.zeros((1, 100, 50, 3), dtype=np.uint8)).shape == (1, 3, 384, 384)


def test_prompt_follows_the_bunny_template(tiny):
    proc = tiny.processor
    pieces = proc.segments(
        [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
        [Block(1, True)],
    )
    text = "".join(t for t, _ in pieces)
    assert text == (
        tiny.config.system_prompt + " USER: <audio>\n<video>\nQ1 ASSISTANT: A1<|endoftext|>USER: Q2 ASSISTANT:"
    )


def _learned(tokenizer, ids, labels):
    return [tokenizer.decode([i]) for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]


def test_labels_mask_everything_but_the_answer(tiny):
    proc = tiny.processor
    frames = np.zeros((4, 384, 384, 3), dtype=np.uint8)
    _, p = _chat(
        proc,
        [{"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "red"}],
        frames=frames,
        audio=np.zeros(16000, np.float32),
        add_generation_prompt=False,
    )
    ids, labels = p.ids, p.labels
    learned = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert proc.tokenizer.decode(learned) == " red<|endoftext|>"
    # The learned span is the tail, and labels equal ids there.
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert all(lab == IGNORE_INDEX for lab in labels[:first]) and labels[first:] == ids[first:]
    assert proc.tokenizer.decode(ids[:first]).endswith("ASSISTANT:")


def test_labels_in_a_multi_turn_chat(tiny):
    proc = tiny.processor
    chat = [
        {"role": "user", "content": "Q one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "Q two"},
        {"role": "assistant", "content": "second answer"},
    ]
    _, p = _chat(proc, chat, audio=np.zeros(16000, np.float32), add_generation_prompt=False)
    ids, labels = p.ids, p.labels
    spans, current = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    assert [proc.tokenizer.decode(s) for s in spans] == [" first answer<|endoftext|>", " second answer<|endoftext|>"]
    assert p.counts == {"audio": 64, "video": 0, "text": len(ids) - 64}


@pytest.mark.parametrize("role", ["system", "user", "assistant"])
def test_typed_placeholders_are_not_media_in_any_role(tiny, role):
    messages = [{"role": "user", "content": "hi"}]
    typed = "<video>\nwhat is <audio> here?"
    if role == "system":
        messages.insert(0, {"role": "system", "content": typed})
    elif role == "user":
        messages[0]["content"] = typed
    else:
        messages += [{"role": "assistant", "content": typed}, {"role": "user", "content": "and?"}]
    _, p = _chat(tiny.processor, messages, audio=np.zeros(16000, np.float32))
    assert p.counts["audio"] == 64 and p.counts["video"] == 0  # only the real audio's placeholders


def test_context_overflow_raises_and_says_by_how_much(tiny):
    proc = tiny.processor
    frames = np.zeros((2, 384, 384, 3), dtype=np.uint8)
    _, p = _chat(proc, [{"role": "user", "content": "hi"}], frames=frames)
    room = 2048 - len(p.ids)
    _chat(proc, [{"role": "user", "content": "hi"}], frames=frames, max_new_tokens=room)  # fits exactly
    with pytest.raises(ContextLengthError) as err:
        _chat(proc, [{"role": "user", "content": "hi"}], frames=frames, max_new_tokens=room + 7)
    assert err.value.over == 7 and "7 over" in str(err.value)
    with pytest.raises(ContextLengthError):
        _chat(proc, [{"role": "user", "content": "word " * 3000}])


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "start with a user"),
        ([{"role": "assistant", "content": "hi"}], "start with a user"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "robot", "content": "a"}], "unknown message role"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ],
)
def test_malformed_chats_raise(tiny, messages, problem):
    with pytest.raises(ValueError, match=problem):
        _chat(tiny.processor, messages)


def test_modalities_drop_unused_streams(tiny, media_dir):
    tensors = preprocess(tiny.processor, decode(str(media_dir / "vllama_dog_barking.mp4"), tiny.config))
    video_only = prompt(tiny.processor, [{"role": "user", "content": "?"}], tensors, ["video"])
    assert not video_only.audio and video_only.counts["audio"] == 0 and video_only.counts["video"] == 829
    audio_only = prompt(tiny.processor, [{"role": "user", "content": "?"}], tensors, ["audio"])
    assert not audio_only.video and audio_only.counts["video"] == 0 and audio_only.counts["audio"] == 64
    with pytest.raises(pipeline.MissingStream, match="no audio stream to use"):
        prompt(tiny.processor, [{"role": "user", "content": "?"}], MediaTensors(tensors.video, None), ["audio"])


def test_text_that_cannot_fit_is_refused_before_it_is_tokenized(tiny):
    huge = [{"role": "user", "content": "word " * 2_000_000}]  # 10 MB
    started = time.perf_counter()
    with pytest.raises(ContextLengthError, match="at least"):
        tiny.processor.check_text_fits(huge)
    assert time.perf_counter() - started < 0.5
    with pytest.raises(TooManyMessages):
        tiny.processor.check_text_fits([{"role": "user", "content": "a"}] * 3000)
    fits = [{"role": "user", "content": "word " * 300}]
    tiny.processor.check_text_fits(fits)  # never refuses what the tokenizer would fit
    assert len(tiny.processor.encode_chat(fits, [])[0]) <= 2048


def test_a_lone_surrogate_or_a_number_for_text_is_a_value_error(tiny):
    for content in ("what \ud800", [{"type": "text", "text": 5}]):
        with pytest.raises(ValueError, match="surrogate|must be text"):
            prompt(tiny.processor, [{"role": "user", "content": content}], None)


def test_one_modality_vocabulary_for_every_caller():
    from model import modalities

    assert modalities.check("audio+video") == ["audio", "video"] and modalities.check(["video", "video"]) == ["video"]
    for bad in ("smell", [], {"a": 1}, [1]):
        with pytest.raises(modalities.UnknownModality):
            modalities.check(bad)
    with pytest.raises(ValueError, match="smell"):
        tiny_config().__class__(modalities=["smell"])


def _windowed(tiny, windows: int) -> AVChatProcessor:
    config = tiny_config()
    config.max_audio_windows = windows
    return AVChatProcessor(tiny.processor.tokenizer, config)


@pytest.mark.parametrize("seconds, most, expected", [(20, 4, 1), (45, 4, 2), (200, 4, 4), (200, 1, 1), (60, 2, 2)])
def test_audio_fills_as_many_windows_as_it_needs_up_to_the_models(tiny, seconds, most, expected):
    proc = _windowed(tiny, most)
    mel = proc.audio_features(np.zeros(16000 * seconds, dtype=np.float32))
    assert mel.shape == (expected, 80, 3000)


@pytest.mark.parametrize("windows", [1, 2, 4])
def test_each_window_is_64_tokens_in_time_order_with_a_newline_between(tiny, windows):
    proc = _windowed(tiny, 4)
    media = MediaTensors(torch.zeros(2, 3, 384, 384), torch.zeros(windows, 80, 3000))
    p = prompt(proc, [{"role": "user", "content": "What do you hear?"}], media)
    assert p.audio_windows == windows and p.counts["audio"] == 64 * windows and p.counts["video"] == 829
    ids = p.ids
    newline = proc.tokenizer("\n", add_special_tokens=False).input_ids
    first = ids.index(proc.audio_token_id)
    for w in range(windows):  # each block: 64 <audio> ids, then the newline
        block = ids[first + w * (64 + len(newline)) :][: 64 + len(newline)]
        assert block[:64] == [proc.audio_token_id] * 64 and block[64:] == newline, w
    assert ids[first + windows * (64 + len(newline))] == proc.video_token_id  # then the video


def test_the_windows_that_do_not_fit_are_left_out_and_said_so(tiny):
    proc = _windowed(tiny, 20)
    media = MediaTensors(torch.zeros(2, 3, 384, 384), torch.zeros(20, 80, 3000))  # 10 minutes of sound
    messages = [{"role": "user", "content": "What do you hear?"}]
    p = prompt(proc, messages, media, max_new_tokens=256)
    assert 1 <= p.audio_windows < 20 and len(p.ids) + 256 <= 2048
    one_more = proc.encode_chat(messages, [Block(p.audio_windows + 1, True)])[0]
    assert len(one_more) + 256 > 2048  # the most that fit
    assert prompt(proc, messages, media, max_new_tokens=256, max_audio_windows=3).audio_windows == 3
    report = pipeline.MediaReport(600.0, 100, 600.0, 0.0).heard_in(p.audio_windows, 30.0)
    assert report.audio_s == 30.0 * p.audio_windows and report.audio_truncated_s == 600.0 - report.audio_s
    with pytest.raises(ContextLengthError, match="over the model's context"):  # not even one window fits
        prompt(proc, messages, media, max_new_tokens=1200)


def test_a_one_window_checkpoint_hears_one_window_as_before(tiny):
    media = MediaTensors(None, tiny.processor.audio_features(np.zeros(16000 * 90, dtype=np.float32)))
    assert media.audio.shape == (1, 80, 3000)
    p = prompt(tiny.processor, [{"role": "user", "content": "?"}], media)
    assert p.audio_windows == 1 and p.counts["audio"] == 64


def _embeddings(tiny, video: bool, windows: int, fill: float) -> pipeline.MediaEmbeddings:
    """Projected media whose every row is distinct and says which medium it came from."""
    h = tiny.config.hidden_size
    rows = lambda n: fill + torch.arange(n * h, dtype=torch.float32).reshape(n, h) / (n * h)  # noqa: E731
    return pipeline.MediaEmbeddings(
        rows(tiny.config.video_tokens) if video else None, rows(windows * 64) + 0.5 if windows else None
    )


def test_each_medium_gets_its_own_block_in_order_and_its_own_embeddings(tiny):
    proc, cfg = tiny.processor, tiny.config
    first, second, sound = (
        _embeddings(tiny, True, 1, 1.0),
        _embeddings(tiny, True, 0, 2.0),
        _embeddings(tiny, False, 2, 3.0),
    )
    messages = [
        {"role": "user", "content": "Compare the two videos."},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "And this sound?"},
    ]
    parts = [pipeline.Part(first, 0), pipeline.Part(second, 0), pipeline.Part(sound, 2, ["audio"])]
    p = prompt(proc, messages, parts)
    assert p.blocks == [Block(1, True, 0), Block(0, True, 0), Block(2, False, 2)]
    text = proc.tokenizer.decode(p.ids)
    a, v = cfg.audio_token, cfg.video_token
    one = f"USER: {a * 64}\n{v * cfg.video_tokens}\n{v * cfg.video_tokens}\nCompare the two videos. ASSISTANT:"
    assert one in text and f"USER: {a * 64}\n{a * 64}\nAnd this sound? ASSISTANT:" in text
    assert p.counts == {"audio": 3 * 64, "video": 2 * cfg.video_tokens, "text": p.counts["text"]}
    embeds = pipeline.prompt_embeds(tiny, p, parts)
    ids = torch.tensor(p.ids)
    videos = (ids == proc.video_token_id).nonzero().flatten()
    audios = (ids == proc.audio_token_id).nonzero().flatten()
    n = cfg.video_tokens
    assert torch.equal(embeds[videos[:n]], first.video) and torch.equal(embeds[videos[n:]], second.video)
    assert torch.equal(embeds[audios[:64]], first.audio) and torch.equal(embeds[audios[64:]], sound.audio)
    assert (audios[:64] < videos[0]).all() and (videos[-1] < audios[64]).all()  # the first's sound, then its video
    text_rows = ~((ids == proc.video_token_id) | (ids == proc.audio_token_id))
    assert torch.equal(embeds[text_rows], tiny.llm.get_input_embeddings()(ids[text_rows]))
    # one medium is the layout the model was trained on: its block opens the first user message
    alone = prompt(proc, messages[:1], first)
    assert alone.ids == prompt(proc, messages[:1], [pipeline.Part(first, 0)]).ids
    assert proc.tokenizer.decode(alone.ids).endswith(f"USER: {a * 64}\n{v * n}\nCompare the two videos. ASSISTANT:")
    with pytest.raises(ValueError, match="media go in user messages"):
        prompt(proc, messages, [pipeline.Part(first, 1)])
    with pytest.raises(ValueError, match="in the order of the messages"):
        prompt(proc, messages, [pipeline.Part(sound, 2), pipeline.Part(first, 0)])


def test_several_media_share_the_context_and_over_it_say_by_how_much(tiny):
    proc = _windowed(tiny, 20)
    messages = [{"role": "user", "content": "What do you hear?"}]
    long, short = MediaTensors(None, torch.zeros(20, 80, 3000)), MediaTensors(None, torch.zeros(3, 80, 3000))
    p = prompt(proc, messages, [long, short, long], max_new_tokens=256)
    windows = [b.audio_windows for b in p.blocks]
    assert len(p.ids) + 256 <= 2048 and sum(windows) == p.audio_windows
    assert windows[1] == 3 and abs(windows[0] - windows[2]) <= 1  # the longest give windows up first, evenly
    more = [Block(w + (i == 0), False) for i, w in enumerate(windows)]
    assert len(proc.encode_chat(messages, more)[0]) + 256 > 2048  # the most that fit
    reports = [pipeline.MediaReport(600.0, 0, 600.0, 0.0), pipeline.MediaReport(90.0, 0, 90.0, 0.0)]
    heard = [pipeline.heard(r, p, proc.config, i) for i, r in enumerate([reports[0], reports[1], reports[0]])]
    assert [r.audio_s for r in heard] == [30.0 * w for w in windows]
    assert heard[0].audio_truncated_s == 600.0 - heard[0].audio_s and heard[1].audio_truncated_s == 0
    three = [MediaTensors(torch.zeros(2, 3, 384, 384), None)] * 3  # 3 x 829 video tokens: never cut
    with pytest.raises(ContextLengthError, match=r"\d+ over the model's context of 2048 tokens; send fewer than its 3"):
        prompt(proc, messages, three)
    with pytest.raises(pipeline.MissingStream, match="medium 2 of 2 has no video stream"):
        prompt(proc, messages, [three[0], short], ["video"])
