from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model import AVChatModel
from model.pipeline import MediaTensors, decode, encode, preprocess, project, prompt, prompt_embeds


@dataclass
class Sample:
    """One prompt with its media as encoder features: what ``forward`` takes."""

    input_ids: torch.Tensor
    video_features: torch.Tensor | None
    audio_features: torch.Tensor | None

    def model_inputs(self) -> dict:
        out = {"input_ids": self.input_ids}
        if self.video_features is not None:
            out["video_features"] = self.video_features
        if self.audio_features is not None:
            out["audio_features"] = self.audio_features
        return out


def _tensors(model, frames=2, audio=True) -> MediaTensors:
    f = np.random.default_rng(0).integers(0, 255, (frames, 384, 384, 3), dtype=np.uint8) if frames else None
    a = np.random.default_rng(1).standard_normal(16000 * 2).astype(np.float32) * 0.1 if audio else None
    proc = model.processor
    return MediaTensors(
        proc.pixel_values(f) if f is not None else None, proc.audio_features(a) if a is not None else None
    )


def _sample(model, frames=2, audio=True, text="What is it?") -> Sample:
    tensors = _tensors(model, frames, audio)
    features = encode(model, [tensors])[0]
    has_media = features.video is not None or features.audio is not None
    p = prompt(model.processor, [{"role": "user", "content": text}], features if has_media else None)
    return Sample(
        torch.tensor([p.ids]),
        None if features.video is None else features.video[None],
        None if features.audio is None else features.audio[None],
    )


def _logits(model, sample):
    with torch.no_grad():
        return model(**sample.model_inputs()).logits


def test_encoders_are_frozen_and_projectors_learn(tiny):
    sample = _sample(tiny)
    labels = sample.input_ids.clone()
    tiny.train()
    try:
        loss = tiny(**sample.model_inputs(), labels=labels).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert not any(p.requires_grad for p in tiny.vision_tower.parameters())
        assert not any(p.requires_grad for p in tiny.audio_tower.parameters())
        assert not tiny.vision_tower.training and not tiny.audio_tower.training
        for projector in (tiny.vision_projector, tiny.audio_projector):
            assert projector[0].weight.grad is not None and projector[0].weight.grad.abs().sum() > 0
    finally:
        tiny.zero_grad(set_to_none=True)
        tiny.eval()


def test_placeholder_and_feature_count_mismatch_raises(tiny):
    sample = _sample(tiny)
    ids = sample.input_ids.clone()
    ids[0, (ids[0] == tiny.config.video_token_id).nonzero()[0]] = 5  # one <video> token fewer
    with pytest.raises(ValueError, match="video placeholders and features do not match: 828"):
        tiny(input_ids=ids, video_features=sample.video_features, audio_features=sample.audio_features)
    with pytest.raises(ValueError, match="audio placeholders"):
        tiny(input_ids=sample.input_ids, video_features=sample.video_features)


def test_short_clips_zero_pad_the_frame_tokens(tiny):
    pixels = tiny.processor.pixel_values(np.random.default_rng(0).integers(0, 255, (3, 384, 384, 3), dtype=np.uint8))
    with torch.no_grad():
        feats = project(tiny, encode(tiny, [MediaTensors(pixels, None)]))[0].video  # (829, H)
        zero = tiny.vision_projector(torch.zeros(tiny.config.vision_config.hidden_size))
    assert feats.shape == (829, tiny.config.hidden_size)
    assert torch.allclose(feats[3:100], zero.expand(97, -1), atol=1e-6)  # padded frame tokens
    assert not torch.allclose(feats[0], zero, atol=1e-4)  # real frame token


def test_padded_batch_matches_single_samples(tiny):
    from training.data import Collator, Example
    from training.trainer import encoder_features

    a_t, b_t = _tensors(tiny, frames=2), _tensors(tiny, frames=4, audio=False)
    a = prompt(tiny.processor, [{"role": "user", "content": "What is it?"}], a_t, add_generation_prompt=False)
    b = prompt(tiny.processor, [{"role": "user", "content": "and this longer one?"}], b_t, add_generation_prompt=False)
    batch = Collator(tiny.tokenizer.pad_token_id)(
        [Example(a.ids, a.labels, raw=a_t), Example(b.ids, b.labels, raw=MediaTensors(b_t.video, None))]
    )
    with torch.no_grad():
        out = tiny(**encoder_features(tiny, batch)).logits
    assert torch.allclose(out[0, : len(a.ids)], _logits(tiny, _sample(tiny, frames=2))[0], atol=1e-4)
    assert torch.allclose(
        out[1, : len(b.ids)],
        _logits(tiny, _sample(tiny, frames=4, audio=False, text="and this longer one?"))[0],
        atol=1e-4,
    )


def test_save_and_load_round_trip_gives_identical_logits(tiny, tmp_path):
    sample = _sample(tiny)
    tiny.save_pretrained(tmp_path / "ckpt")
    again = AVChatModel.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(_logits(tiny, sample), _logits(again, sample))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "audio",
        "config.json",
        "llm",
        "projectors.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vision",
    ]


def test_merged_lora_gives_the_same_outputs_as_unmerged(tiny_home, tmp_path):
    model = AVChatModel.from_pretrained("tiny")
    model.add_lora(r=8, alpha=16, dropout=0.0)
    torch.manual_seed(0)
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter an effect
            p.data.normal_(0, 0.05)
    sample = _sample(model)
    with_adapter = _logits(model, sample)
    base = AVChatModel.from_pretrained("tiny")
    assert not torch.allclose(with_adapter, _logits(base, sample), atol=1e-3)

    model.save_pretrained(tmp_path / "adapter-ckpt", merge=False)
    model.save_pretrained(tmp_path / "merged-ckpt", merge=True)
    assert (tmp_path / "adapter-ckpt" / "adapter").is_dir() and not (tmp_path / "merged-ckpt" / "adapter").exists()
    unmerged = AVChatModel.from_pretrained(tmp_path / "adapter-ckpt")
    merged = AVChatModel.from_pretrained(tmp_path / "merged-ckpt")
    assert unmerged.has_lora and not merged.has_lora
    assert torch.allclose(_logits(unmerged, sample), with_adapter, atol=1e-5)
    assert torch.allclose(_logits(merged, sample), with_adapter, atol=1e-4)
    model.merge_lora()
    assert not model.has_lora and torch.allclose(_logits(model, sample), with_adapter, atol=1e-4)


def test_bunny_projector_import(tiny_home, tmp_path):
    model = AVChatModel.from_pretrained("tiny")
    cv, h = model.config.vision_config.hidden_size, model.config.hidden_size
    state = {
        "model.mm_projector.0.weight": torch.randn(h, cv),
        "model.mm_projector.0.bias": torch.randn(h),
        "model.mm_projector.2.weight": torch.randn(h, h),
        "model.mm_projector.2.bias": torch.randn(h),
    }
    model.load_bunny_projector(state)
    assert torch.equal(model.vision_projector[0].weight, state["model.mm_projector.0.weight"])
    assert torch.equal(model.vision_projector[2].bias, state["model.mm_projector.2.bias"])
    torch.save(state, tmp_path / "mm_projector.bin")  # Bunny ships it as a .bin file
    model.vision_projector[0].weight.data.zero_()
    model.load_bunny_projector(str(tmp_path / "mm_projector.bin"))
    assert torch.equal(model.vision_projector[0].weight, state["model.mm_projector.0.weight"])
    with pytest.raises(ValueError, match="does not fit"):
        model.load_bunny_projector({**state, "model.mm_projector.0.weight": torch.randn(h, cv + 1)})
    with pytest.raises(ValueError, match="no 'model.mm_projector"):
        model.load_bunny_projector({"mm_projector.0.weight": torch.randn(h, cv)})


@pytest.mark.parametrize("modalities", [("audio", "video"), ("video",), ("audio",), None])
def test_generate_streams_tokens_for_each_modality(tiny, media_dir, modalities):
    media = decode(str(media_dir / "vllama_dog_barking.mp4"), tiny.config)
    embeddings = project(tiny, encode(tiny, [preprocess(tiny.processor, media)]))[0] if modalities else None
    p = prompt(tiny.processor, [{"role": "user", "content": "What happens?"}], embeddings, modalities)
    assert p.counts["audio"] == (64 if modalities and "audio" in modalities else 0)
    assert p.counts["video"] == (829 if modalities and "video" in modalities else 0)
    embeds = prompt_embeds(tiny, p, embeddings)
    stream = tiny.generate(embeds, max_new_tokens=5)
    first = next(stream)
    rest = list(stream)
    tokens = [first, *rest]
    assert 1 <= len(tokens) <= 5 and all(0 <= t < tiny.config.text_config.vocab_size for t in tokens)
    assert list(tiny.generate(embeds, max_new_tokens=5)) == tokens  # greedy decoding is deterministic


def test_sampling_is_reproducible_with_a_seed(tiny):
    embeds = tiny.merge_media(_sample(tiny, frames=0, audio=False).input_ids)[0]
    a = list(tiny.generate(embeds, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7))
    b = list(tiny.generate(embeds, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7))
    assert a == b


def test_video_without_audio_track_skips_the_audio_branch(tiny, media_dir):
    media = decode(str(media_dir / "vllama_birthday.mp4"), tiny.config)
    embeddings = project(tiny, encode(tiny, [preprocess(tiny.processor, media)]))[0]
    assert media.audio is None and embeddings.audio is None
    p = prompt(tiny.processor, [{"role": "user", "content": "What is the boy doing?"}], embeddings)
    assert p.counts["audio"] == 0 and p.counts["video"] == 829
    assert prompt_embeds(tiny, p, embeddings).shape == (len(p.ids), tiny.config.hidden_size)


def test_vision_features_come_from_the_penultimate_layer(tiny):
    pixels = torch.randn(3, 3, 384, 384)
    with torch.no_grad():
        reference = tiny.vision_tower(pixels, output_hidden_states=True).hidden_states[-2]
        ours = tiny.vision_hidden_states(pixels)
    assert ours.shape == (3, 729, tiny.config.vision_config.hidden_size)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_videos_encoded_together_match_one_at_a_time(tiny):
    rng = np.random.default_rng(3)
    a = tiny.processor.pixel_values(rng.integers(0, 255, (5, 384, 384, 3), dtype=np.uint8))
    b = tiny.processor.pixel_values(rng.integers(0, 255, (2, 384, 384, 3), dtype=np.uint8))
    together = encode(tiny, [MediaTensors(a, None), MediaTensors(b, None)])
    alone = encode(tiny, [MediaTensors(b, None)])
    assert torch.allclose(together[1].video, alone[0].video, atol=1e-5)
    assert together[0].video.shape == (829, tiny.config.vision_config.hidden_size)


def _saved_bytes_and_grads(model, sample, labels):
    """Bytes of the tensors autograd keeps for backward during one forward, and the gradients."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**sample.model_inputs(), labels=labels).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return sum(saved), grads


def test_gradient_checkpointing_takes_the_trainers_arguments_saves_memory_and_keeps_gradients(tiny_home):
    model = AVChatModel.from_pretrained("tiny")
    model.add_lora(r=4, alpha=8, dropout=0.0)
    model.llm.requires_grad_(False)
    for name, p in model.llm.named_parameters():
        p.requires_grad_("lora_" in name)
    sample = _sample(model, frames=2)
    labels = sample.input_ids.clone()
    plain_bytes, plain_grads = _saved_bytes_and_grads(model, sample, labels)
    # transformers 5.19's Trainer passes every_n_layers and offload.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, every_n_layers=1, offload=False)
    assert model.is_gradient_checkpointing
    ckpt_bytes, ckpt_grads = _saved_bytes_and_grads(model, sample, labels)
    assert ckpt_bytes < 0.7 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert plain_grads.keys() == ckpt_grads.keys() and any("lora_" in n for n in ckpt_grads)
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], ckpt_grads[name], atol=1e-5, rtol=1e-4), name
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    with pytest.raises(TypeError, match="unexpected arguments"):
        model.gradient_checkpointing_enable(no_such_option=3)


def test_embeddings_only_holds_just_the_table_and_embeds_the_same(tiny, media_dir):
    """What the service keeps when vLLM runs the LLM: no second copy of it."""
    light = AVChatModel.from_pretrained(tiny.source, embeddings_only=True)
    params = sum(p.numel() for p in light.llm.parameters())
    assert params == tiny.llm.get_input_embeddings().weight.numel()
    assert params < 0.5 * sum(p.numel() for p in tiny.llm.parameters())
    media = decode(str(media_dir / "vllama_dog_barking.mp4"), tiny.config)
    full = project(tiny, encode(tiny, [preprocess(tiny.processor, media)]))[0]
    mine = project(light, encode(light, [preprocess(light.processor, media)]))[0]
    p = prompt(tiny.processor, [{"role": "user", "content": "What do you hear?"}], full)
    assert torch.equal(prompt_embeds(tiny, p, full), prompt_embeds(light, p, mine))
    assert light.generation_config is not None


def test_windows_of_several_clips_are_encoded_in_one_batch_and_match_alone(tiny):
    from model.pipeline import MediaTensors, encode

    rng = np.random.default_rng(3)
    three = torch.from_numpy(rng.standard_normal((3, 80, 3000)).astype(np.float32))
    one = torch.from_numpy(rng.standard_normal((1, 80, 3000)).astype(np.float32))
    together = encode(tiny, [MediaTensors(None, three), MediaTensors(None, one)])
    assert together[0].audio.shape == (3 * 64, tiny.config.audio_config.d_model)
    assert together[1].audio.shape == (64, tiny.config.audio_config.d_model)
    for w in range(3):  # window w of the first clip is that window encoded on its own
        alone = encode(tiny, [MediaTensors(None, three[w : w + 1])])[0].audio
        assert torch.allclose(together[0].audio[w * 64 : (w + 1) * 64], alone, atol=1e-4)
