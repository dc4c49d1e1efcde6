"""The audio-visual chat model: frozen SigLIP and Whisper encoders, two ``mlp2x_gelu``
projectors into Phi's embedding space, and the Phi LLM.

    video (B, F, 3, 384, 384) --SigLIP layer -2--> (B*F, 729, Cv) --pool--> (B, 100 + 729, Cv) --proj--> (B, 829, H)
    mel (W, 80, 3000) --Whisper enc+dec, 64 start tokens--> (W, 64, Ca) --proj--> (W * 64, H), W windows of 30 s
    token ids with 64 <audio> / 829 <video> ids --embed--> (B, T, H), media written in by masked_scatter

``forward`` takes the encoders' outputs (one form per modality, as transformers' LLaVA family
takes one): the frozen encoders run outside it, in :mod:`model.pipeline` for inference and in
the trainer for training, so a training feature cache and raw media give the same batch.

    python -m model ask clip.mp4 "What do you hear?" --preset tiny
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, SiglipVisionModel, WhisperModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from . import bunny, presets
from . import quantization as quant
from .components import component, is_local, load_components
from .config import PROJECTORS_FILE, AVChatConfig
from .generation import sample_token
from .llm_parts import generation_config
from .processor import AVChatProcessor, add_media_tokens


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    # Same layout as Bunny's projector, so its `mm_projector.0/2` weights load by index.
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class AVChatModel(nn.Module):
    main_input_name = "input_ids"  # what HF Trainer looks for

    def __init__(
        self, config: AVChatConfig, vision_tower: nn.Module, audio_tower: nn.Module, llm: nn.Module, tokenizer=None
    ):
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.audio_tower = audio_tower
        self.llm = llm
        self.vision_projector = mlp2x_gelu(config.vision_config.hidden_size, config.hidden_size)
        self.audio_projector = mlp2x_gelu(config.audio_config.d_model, config.hidden_size)
        self.tokenizer = tokenizer
        self.processor = AVChatProcessor(tokenizer, config) if tokenizer is not None else None
        if tokenizer is not None:
            config.audio_token_id = self.processor.audio_token_id
            config.video_token_id = self.processor.video_token_id
        self.source: str | None = None  # the folder this model was loaded from
        self.generation_config = None  # the LLM's sampling defaults (generation_config.json)
        self.built_from_config = False  # random weights: nothing to refer to, everything is saved
        self.freeze_encoders()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: AVChatConfig, tokenizer=None) -> AVChatModel:
        """Random weights (the tiny preset, or real sizes for benchmarks)."""
        vision = SiglipVisionModel(config.vision_config)
        audio = WhisperModel(config.audio_config)
        llm = AutoModelForCausalLM.from_config(config.text_config)
        model = cls(config, vision, audio, llm, tokenizer)
        model.built_from_config = True
        return model

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        embeddings_only: bool = False,
        quantization: str = "none",
    ) -> AVChatModel:
        """Loads a checkpoint folder, a preset (``demo``, ``tiny``, ``phi2-shape``, ``phi2``) or, on
        a machine that reaches the hub, the components named by hub ids. ``embeddings_only`` loads
        of the LLM only its input embedding table: all the service needs when vLLM runs the LLM
        (the rest would be a second copy of 5 GB).

        ``quantization`` (:mod:`model.quantization`): ``int8`` quantizes the encoders and the LLM
        after loading; a checkpoint exported with int8 weights loads as it is stored, whatever
        is asked. ``bnb-8bit`` / ``bnb-4bit`` load the LLM through bitsandbytes on a GPU; vLLM's
        methods concern the engine, not this load."""
        ref = presets.resolve(name_or_path, build=write_random_checkpoint)
        if isinstance(ref, AVChatConfig):
            root, config = None, ref
        else:
            root, config = ref, AVChatConfig.from_pretrained(ref)
        stored_int8 = config.quantization == "int8"
        llm_ref = component(root, config.llm)
        vision, audio, llm = load_components(root, config, dtype, device, embeddings_only, quantization)
        tokenizer = AutoTokenizer.from_pretrained(
            component(root, config.tokenizer_name) if config.tokenizer_name else root
        )
        add_media_tokens(tokenizer)
        # Sub-configs follow the weights actually loaded.
        config.vision_config, config.audio_config = vision.config, audio.config
        config.text_config = llm.config if not embeddings_only else config.text_config
        model = cls(config, vision, audio, llm, tokenizer)
        model.source = root
        model.generation_config = generation_config(llm_ref)
        if root is not None and os.path.isdir(os.path.join(root, "adapter")):
            if embeddings_only:
                raise ValueError(
                    f"{root} keeps LoRA in adapter/: export it with the adapter merged "
                    "(python -m training.export) for an engine that runs the LLM itself"
                )
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, os.path.join(root, "adapter"))
        if root is not None and os.path.exists(os.path.join(root, PROJECTORS_FILE)):
            model.load_projectors(os.path.join(root, PROJECTORS_FILE))
        elif config.vision_projector_init:
            model.load_bunny_projector(config.vision_projector_init)
        parts = (
            [model.vision_tower, model.audio_tower, model.vision_projector, model.audio_projector]
            if quantization in quant.BNB_METHODS  # bitsandbytes placed the LLM itself
            else [model]
        )
        for part in parts:
            if dtype is not None:
                part.to(dtype)
            if device is not None:
                part.to(device)
        if quantization == "int8" and not stored_int8:
            quant.quantize_int8(model)
        return model.eval()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """Recompute the LLM's activations in backward. HF Trainer calls this with whatever its
        release passes (``every_n_layers`` and ``offload`` in transformers 5.19); every keyword
        the LLM's own method takes is forwarded to it."""
        llm = self._base_llm
        accepted = inspect.signature(llm.gradient_checkpointing_enable).parameters
        unknown = set(kwargs) - set(accepted)
        if unknown:
            raise TypeError(f"gradient_checkpointing_enable() got unexpected arguments {sorted(unknown)}")
        llm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False}, **kwargs
        )
        llm.config.use_cache = False

    def gradient_checkpointing_disable(self) -> None:
        self._base_llm.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Read by HF Trainer when it wraps the model in DDP."""
        return self._base_llm.is_gradient_checkpointing

    @property
    def _base_llm(self):
        return self.llm.get_base_model() if self.has_lora else self.llm

    def freeze_encoders(self) -> None:
        for tower in (self.vision_tower, self.audio_tower):
            tower.requires_grad_(False)
            tower.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision_tower.eval()  # frozen encoders never switch to training behaviour
        self.audio_tower.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    # -- projectors, Bunny import ---------------------------------------------------------------

    def projector_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{k}": v.detach().contiguous().cpu()
            for name in ("audio_projector", "vision_projector")
            for k, v in getattr(self, name).state_dict().items()
        }

    def load_projectors(self, path: str) -> None:
        state = load_file(path)
        for name in ("audio_projector", "vision_projector"):
            part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
            if part:
                getattr(self, name).load_state_dict(part)

    def load_bunny_projector(self, source: str | dict) -> None:
        """Imports Bunny's pretrained vision projector (see ``bunny.load_vision_projector``)."""
        bunny.load_vision_projector(self.vision_projector, source)

    # -- features -------------------------------------------------------------------------------

    def vision_hidden_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, P, Cv): the SigLIP hidden state at ``vision_feature_layer``.
        Layers after it are never run (Bunny drops them too): at layer -2 that skips the last
        layer and the pooling head."""
        vm = getattr(self.vision_tower, "vision_model", self.vision_tower)  # transformers 4 nests it
        layers = vm.encoder.layers
        layer = self.config.vision_feature_layer
        n = len(layers) + 1 + layer if layer < 0 else layer  # hidden_states[k] = after k layers
        h = vm.embeddings(pixel_values.to(vm.embeddings.patch_embedding.weight.dtype))  # (N, P, Cv)
        for block in layers[:n]:
            h = block(h, None)
        return h

    def pool_video(self, videos: list[torch.Tensor], chunk: int = 8) -> torch.Tensor:
        """A list of (F_i, 3, S, S) -> (B, num_frames + patches, Cv), before the projector. Frame
        tokens (mean over patches; zero for missing frames) then patch tokens (mean over the
        real frames), as in Video-ChatGPT. Frames go through SigLIP in small chunks (faster on
        CPU caches, bounded memory on GPU), across videos."""
        counts = [v.shape[0] for v in videos]
        if max(counts) > self.config.num_frames:
            raise ValueError(f"got {max(counts)} frames; the model takes at most {self.config.num_frames}")
        pieces = [f for v in videos for f in v.split(chunk)]  # views, no copy of the whole batch
        pending, feats = [], []
        with torch.no_grad():
            for piece in pieces:
                pending.append(piece)
                if sum(p.shape[0] for p in pending) >= chunk:
                    feats.append(self.vision_hidden_states(torch.cat(pending)))
                    pending = []
            if pending:
                feats.append(self.vision_hidden_states(torch.cat(pending)))
        tokens = []
        for f in torch.cat(feats).split(counts):  # per video: (F_i, P, Cv)
            frame_tokens = nn.functional.pad(f.mean(1), (0, 0, 0, self.config.num_frames - f.shape[0]))  # (T, Cv)
            tokens.append(torch.cat([frame_tokens, f.mean(0)]))  # (T + P, Cv)
        return torch.stack(tokens)  # (B, T + P, Cv)

    def encode_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        """(B, 80, 3000) log-mel -> (B, 64, Ca), before the projector: LLaSM's read-out, the
        Whisper decoder's last hidden state over 64 start tokens."""
        b = input_features.shape[0]
        start = self.config.audio_config.decoder_start_token_id
        decoder_ids = torch.full((b, self.config.audio_tokens), start, dtype=torch.long, device=input_features.device)
        with torch.no_grad():
            return self.audio_tower(
                input_features=input_features.to(self.audio_tower.dtype), decoder_input_ids=decoder_ids
            ).last_hidden_state  # (B, 64, Ca)

    def project_video(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, T + P, Cv) pooled SigLIP tokens -> (B, T + P, H)."""
        return self.vision_projector(pooled.to(self.vision_projector[0].weight.dtype))

    def project_audio(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 64, Ca) Whisper read-out -> (B, 64, H)."""
        return self.audio_projector(hidden.to(self.audio_projector[0].weight.dtype))

    def merge_media(
        self,
        input_ids: torch.Tensor,
        video_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text embeddings ``(B, T, H)`` with the projected media written into the placeholder
        positions, after a hard count check. ``*_embeds`` hold, in batch order, one row per
        sample that has that medium (``(B_m, N, H)``), or every sample's tokens one after another
        (``(sum N_i, H)``: clips with different numbers of audio windows)."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, T, H)
        for name, token_id, feats in (
            ("video", self.config.video_token_id, video_embeds),
            ("audio", self.config.audio_token_id, audio_embeds),
        ):
            mask = input_ids == token_id  # (B, T)
            n_tokens = int(mask.sum())
            n_feats = 0 if feats is None else feats.shape[:-1].numel()
            if n_tokens != n_feats:
                raise ValueError(
                    f"{name} placeholders and features do not match: {n_tokens} <{name}> tokens in "
                    f"the prompt, {n_feats} {name} feature vectors"
                )
            if feats is not None:
                embeds = embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))
        return embeds

    # -- forward, generate ----------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """``video_features`` (B_v, T + P, Cv) and ``audio_features`` (sum of W_i * 64, Ca), every
        sample's audio windows one after another (or ``(B_a, 64, Ca)``), are the frozen encoders'
        outputs (:func:`model.pipeline.encode`, or a training feature cache)."""
        video = self.project_video(video_features) if video_features is not None else None
        audio = self.project_audio(audio_features) if audio_features is not None else None
        embeds = self.merge_media(input_ids, video, audio)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        eos_token_id: int | None = None,
    ) -> Iterator[int]:
        """Streams generated token ids from a prompt embedding matrix ``(T, H)``
        (:func:`model.pipeline.prompt_embeds`). Greedy at temperature 0; stops at EOS. Closing
        the iterator stops the work."""
        embeds = prompt_embeds.to(self.device, self.dtype).unsqueeze(0)  # (1, T, H)
        eos = eos_token_id if eos_token_id is not None else self.tokenizer.eos_token_id
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        # Only the last position's logits: over a 950-token prompt the rest would be 0.25 TFLOP of
        # lm_head work (5% of Phi-2's prefill) and 200 MB of float32 nobody reads.
        out = self.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        for _ in range(max_new_tokens):
            token = sample_token(out.logits[0, -1].float(), temperature, top_p, generator)
            yield token
            if token == eos:
                return
            out = self.llm(
                input_ids=torch.tensor([[token]], device=self.device),
                past_key_values=out.past_key_values,
                use_cache=True,
            )

    # -- LoRA -----------------------------------------------------------------------------------

    def add_lora(self, r: int = 128, alpha: int = 256, dropout: float = 0.05) -> None:
        """LoRA on every linear layer of the LLM (not the output head)."""
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        self.llm = get_peft_model(self.llm, cfg)

    @property
    def has_lora(self) -> bool:
        return hasattr(self.llm, "peft_config")

    def merge_lora(self) -> None:
        if self.has_lora:
            self.llm = self.llm.merge_and_unload()

    # -- saving ---------------------------------------------------------------------------------

    def _owns(self, ref: str) -> bool:
        """Whether a component's weights must be written (not merely referred to by hub id)."""
        return self.built_from_config or self.config.quantization == "int8" or is_local(self.source, ref)

    def save_pretrained(self, path: str | os.PathLike, merge: bool = True) -> None:
        """Writes the checkpoint folder: config.json, tokenizer, projectors.safetensors, llm/
        (the LLM, LoRA merged) or adapter/ (``merge=False``), and vision/ audio/ when the
        encoders are not referenced by hub id."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        config = AVChatConfig.from_dict(self.config.to_dict())
        for sub in (config.vision_config, config.audio_config, config.text_config):
            sub._name_or_path = ""  # where this run happened to load them from means nothing elsewhere
        for attr, sub, tower in (
            ("vision_tower", "vision", self.vision_tower),
            ("audio_tower", "audio", self.audio_tower),
        ):
            if self._owns(getattr(self.config, attr)):  # else a hub id: keep referring to it
                tower.save_pretrained(out / sub)
                setattr(config, attr, sub)
        llm = self.llm
        if self.has_lora and not merge:
            llm.save_pretrained(out / "adapter")
            if self._owns(self.config.llm):
                base = llm.get_base_model()
                # The base model carries the injected LoRA layers: save only its own weights.
                state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
                base.save_pretrained(out / "llm", state_dict=state)
                config.llm = "llm"
        elif self.has_lora or self._owns(self.config.llm):  # else an unchanged hub model: keep referring to it
            if self.has_lora:  # merge a copy: the model in memory keeps its adapter
                import copy

                llm = copy.deepcopy(llm).merge_and_unload()
            llm.save_pretrained(out / "llm")
            config.llm = "llm"
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
            if config.llm == "llm":  # llm/ stands alone too (vLLM loads it as a plain model folder)
                self.tokenizer.save_pretrained(out / "llm")
            config.tokenizer_name = None
        save_file(self.projector_state_dict(), str(out / PROJECTORS_FILE))
        config.vision_projector_init = None
        config.save_pretrained(out)


def write_random_checkpoint(config: AVChatConfig, tokenizer, path: Path, seed: int, dtype: str = "float32") -> None:
    """A checkpoint folder with seeded random weights of ``config``'s geometry (the presets
    built offline), created directly in ``dtype``."""
    add_media_tokens(tokenizer)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = AVChatModel.from_config(config, tokenizer)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(path)
