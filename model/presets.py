"""Presets, and where a model name leads: ``phi2`` names the real Hugging Face ids; ``tiny`` is
the same classes with random weights and small widths, built offline (tokenizer included),
written to a local checkpoint folder and then loaded through the same ``from_pretrained`` code
as any checkpoint; ``demo`` is the checkpoint shipped in ``model/demo``.

``tiny`` keeps the real geometry, so every token count and boundary shape is the real one:
384 px frames in 14 px patches (729 patches), 100 frames, 80 x 3000 mel input, 64 audio tokens
and a 2048-token context. Attention heads are 32 wide because vLLM's CPU build refuses 16.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from transformers import PhiConfig, SiglipVisionConfig, WhisperConfig

from .config import AVChatConfig

TINY_VERSION = "4"  # bump when the tiny recipe changes, so cached folders are rebuilt
PHI2_SHAPE_VERSION = "1"
TINY_SEED = 0
EOS = "<|endoftext|>"


def cache_home() -> Path:
    return Path(os.environ.get("AVCHAT_HOME", Path.home() / ".cache" / "avchat"))


def phi2_config() -> AVChatConfig:
    """The paper's model: SigLIP so400m/14-384, Whisper-small, Phi-2 (real sizes, no weights)."""
    return AVChatConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            layer_norm_eps=1e-6,
            hidden_act="gelu_pytorch_tanh",
        ),
        audio_config=WhisperConfig(
            vocab_size=51865,
            num_mel_bins=80,
            d_model=768,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
            max_source_positions=1500,
            max_target_positions=448,
            decoder_start_token_id=50258,
            pad_token_id=50257,
            bos_token_id=50257,
            eos_token_id=50257,
        ),
        text_config=PhiConfig(
            vocab_size=51200,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            max_position_embeddings=2048,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            partial_rotary_factor=0.4,
            bos_token_id=50256,
            eos_token_id=50256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.4},
        ),
        vision_tower="google/siglip-so400m-patch14-384",
        audio_tower="openai/whisper-small",
        llm="microsoft/phi-2",
        tokenizer_name="microsoft/phi-2",
        vision_projector_init="BAAI/bunny-pretrain-phi-2-siglip",
    )


def phi2_shape_config() -> AVChatConfig:
    """The paper's geometry and sizes exactly, with every component stored in the checkpoint folder
    (vision/, audio/, llm/): the random-weight preset, and the layout ``python -m model download`` writes."""
    config = phi2_config()
    config.vision_tower, config.audio_tower, config.llm, config.tokenizer_name = "vision", "audio", "llm", None
    config.vision_projector_init = None
    return config


def tiny_config(vocab_size: int = 1024) -> AVChatConfig:
    """Real geometry, tiny widths: every sub-model is 2 layers of 2 heads of 32."""
    return AVChatConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=384,
            patch_size=14,
        ),
        audio_config=WhisperConfig(
            vocab_size=128,
            num_mel_bins=80,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_source_positions=1500,
            max_target_positions=128,
            decoder_start_token_id=1,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            # init_std 0.4 (not 0.02): at width 64 the random decoder's cross-attention
            # is otherwise too weak for its 64-token read-out to tell sounds apart.
            init_std=0.4,
        ),
        # initializer_range 0.1 (not 0.02): at width 64, 0.02 leaves the frozen output head too weak for
        # any token to get much probability, and a LoRA run could not fit even a handful of samples.
        text_config=PhiConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=2048,
            partial_rotary_factor=0.5,
            initializer_range=0.1,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
        vision_tower="vision",
        audio_tower="audio",
        llm="llm",
        tokenizer_name=None,
        vision_projector_init=None,
    )


# Text the tiny tokenizer learns its merges from: the chat template and everyday English.
_TINY_CORPUS = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful,
detailed, and polite answers to the user's questions. USER: ASSISTANT:
What do you hear? What do you see? Describe the video. What is happening in this clip? Why is it funny?
What sound is playing? How many beeps are there? Which direction does the shape move? What colour is it?
The video shows a man at a door and a dog barking. A boat on a river with a city skyline.
A baby reading a book and laughing. A red circle moves to the left while a high tone plays.
A blue square moves right, a green triangle moves up, a yellow star moves down. There is silence.
There are one two three four five beeps. The sound is a low tone, a high tone, noise, speech, music.
yes no the a an and or of to in on at with is are was were it this that there what which who how why
left right up down red green blue yellow white black orange purple small large fast slow loud quiet
0 1 2 3 4 5 6 7 8 9 10 I you he she we they person people speaks says sings plays walks runs
"""


def build_tiny_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained in code on a small corpus (GPT-2 style, like Phi-2's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 8,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=2048
    )
    return fast


def build_gpt2_tokenizer():
    """Phi-2's tokenizer, rebuilt offline: GPT-2's byte-level BPE from the vendored ranks
    (``assets/gpt2.tiktoken``), with ``<|endoftext|>`` as id 50256."""
    import base64

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks: dict[bytes, int] = {}
    for line in (Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken").read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    byte_char = _bytes_to_unicode()
    as_text = lambda b: "".join(byte_char[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            left, right = _split(ranks, token, rank)
            merges.append((as_text(left), as_text(right)))
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=2048
    )


def _split(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The last merge that made ``token``: BPE on its bytes with the merges ranked before it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


# (config, tokenizer, folder, seed, dtype) -> None: writes a random-weight checkpoint folder (modeling's).
Builder = Callable[[AVChatConfig, object, Path, int, str], None]
# Random-weight presets built on first use: name -> (version, config, tokenizer, dtype of the weights).
# phi2-shape is stored in bfloat16: 6.7 GB on disk and in memory while it is built, not 13.4.
BUILT = {
    "tiny": (TINY_VERSION, tiny_config, build_tiny_tokenizer, "float32"),
    "phi2-shape": (PHI2_SHAPE_VERSION, phi2_shape_config, build_gpt2_tokenizer, "bfloat16"),
}


def built_checkpoint(name: str, build: Builder, home: Path | None = None) -> Path:
    """A random-weight preset's folder, built on first use (atomically, so parallel users are safe)."""
    version, make_config, make_tokenizer, dtype = BUILT[name]
    target = (home or cache_home()) / f"{name}-v{version}"
    if (target / "PRESET").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(make_config(), make_tokenizer(), tmp, TINY_SEED, dtype)
        if not any(tmp.rglob("*.safetensors")):
            raise RuntimeError(
                f"building the {name} preset wrote no weights (under torch.distributed only rank 0 writes "
                "them): load it on rank 0 first, as training does"
            )
        (tmp / "PRESET").write_text(f"{name} {version}\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "PRESET").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


PRESETS = {"tiny": tiny_config, "phi2-shape": phi2_shape_config, "phi2": phi2_config}

# The built-in demo model: tiny's architecture after the synthetic experiment's audio-visual
# training (python -m training.synthetic experiment; see model/demo/README.md). It answers
# questions about synthetic clips like model/demo/sample.mp4: the square's colour and the sound.
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "checkpoint"


def resolve(name_or_path: str | os.PathLike, build: Builder) -> str | AVChatConfig:
    """A checkpoint folder for a folder or a built preset (``tiny`` is built with ``build`` on
    first use, ``demo`` ships with the package), or the config of a hub preset (``phi2``)."""
    text = str(name_or_path)
    if os.path.isdir(text):
        return text
    if text in BUILT:
        return str(built_checkpoint(text, build))
    if text == "demo":
        return str(DEMO_CHECKPOINT)
    if text == "phi2":
        from .hub import PHI2_REPOS, ensure_available

        ensure_available([r for k, r in PHI2_REPOS.items() if k != "projector"])
    if text in PRESETS:
        return PRESETS[text]()
    raise FileNotFoundError(f"{text!r} is neither a checkpoint folder nor a preset ({', '.join(['demo', *PRESETS])})")
