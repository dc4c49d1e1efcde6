"""The model's configuration: three sub-configs (SigLIP vision, Whisper audio, Phi text) plus the
fields that shape the prompt, saved as the checkpoint folder's ``config.json``."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .modalities import MODALITIES, check

# Bunny's `conv_bunny` system prompt.
BUNNY_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
PROJECTORS_FILE = "projectors.safetensors"  # in a checkpoint folder: audio_projector.*, vision_projector.*


class AVChatConfig(PreTrainedConfig):
    """Audio-visual chat model: SigLIP + Whisper encoders, two MLP projectors, a Phi LLM.

    The ``*_tower`` / ``llm`` fields name where each component's weights live: a subfolder of
    the checkpoint (``"vision"``, ``"llm"``, ...) or a Hugging Face hub id.
    """

    model_type = "avchat"
    sub_configs = {"vision_config": AutoConfig, "audio_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None

    vision_tower: str = "google/siglip-so400m-patch14-384"
    audio_tower: str = "openai/whisper-small"
    llm: str = "microsoft/phi-2"
    # Where the tokenizer comes from; None: the checkpoint folder itself.
    tokenizer_name: str | None = None
    # Used when the checkpoint has no projectors.safetensors: Bunny's pretrained projector.
    vision_projector_init: str | None = "BAAI/bunny-pretrain-phi-2-siglip"

    # Video-ChatGPT samples 100 frames; fewer real frames are zero-padded as tokens.
    num_frames: int = 100
    # Bunny's select_layer: the penultimate SigLIP layer carries less CLIP-objective bias.
    vision_feature_layer: int = -2
    # LLaSM: 64 decoder positions of Whisper summarise the clip.
    audio_tokens: int = 64
    projector_type: str = "mlp2x_gelu"
    # What the model was trained to use; the processor drops the rest.
    modalities: list[str] | None = None
    audio_token: str = "<audio>"
    video_token: str = "<video>"
    audio_token_id: int | None = None
    video_token_id: int | None = None
    system_prompt: str = BUNNY_SYSTEM
    # Whisper sees one 30 s window ...
    audio_seconds: float = 30.0
    # ... and the audio branch takes up to this many of them, in time order (64 tokens each, a
    # newline between them, as between the other placeholders). 1: the paper's model; a
    # checkpoint trained on longer audio declares more (at 2048 tokens about 13 fit beside the video).
    max_audio_windows: int = 1
    # "int8": the folder's encoders and LLM hold int8 weights (python -m training.export
    # --quantization int8); they load as stored. None: weights in a float dtype.
    quantization: str | None = None

    def __post_init__(self, **kwargs):
        defaults = {"vision_config": "siglip_vision_model", "audio_config": "whisper", "text_config": "phi"}
        for key, model_type in defaults.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                value = dict(value)
                value.setdefault("model_type", model_type)
                setattr(self, key, CONFIG_MAPPING[value.pop("model_type")](**value))
            elif value is None:
                setattr(self, key, CONFIG_MAPPING[model_type]())
        self.modalities = list(MODALITIES) if self.modalities is None else check(self.modalities)
        if self.projector_type != "mlp2x_gelu":
            raise ValueError(f"projector_type {self.projector_type!r} is not supported; use 'mlp2x_gelu'")
        super().__post_init__(**kwargs)

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def patches_per_frame(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def video_tokens(self) -> int:
        """Frame tokens (one per frame) + patch tokens (one per patch position)."""
        return self.num_frames + self.patches_per_frame

    @property
    def context_length(self) -> int:
        return self.text_config.max_position_embeddings

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size


AutoConfig.register("avchat", AVChatConfig)
