"""Bunny's checkpoint formats (BAAI-DCAI/Bunny, ``bunny/model/``), and the import of a Bunny-format
merged checkpoint (such as Owlet-Phi-2-Audio, ``phronetic-ai/owlet-phi-2-audio``) as ours.

Key names, from Bunny's code:

* ``BunnyPhiForCausalLM`` subclasses transformers' ``PhiForCausalLM``: the LLM is
  ``model.embed_tokens``, ``model.layers.N.*``, ``model.final_layernorm``, ``lm_head``;
* ``BunnyMetaModel`` adds ``model.vision_tower`` (a ``SiglipVisionTower`` whose own
  ``vision_tower`` is a ``SiglipVisionModel``: ``model.vision_tower.vision_tower.vision_model.*``)
  and ``model.mm_projector`` (``mlp2x_gelu``: ``model.mm_projector.{0,2}.{weight,bias}``);
* the config is a ``PhiConfig`` (``model_type: bunny-phi``) with ``mm_vision_tower`` naming the
  SigLIP checkpoint (a hub id or a folder) whose config the tower has.

An audio branch (Owlet's Whisper and its projector) is found by name: keys under a module whose
name contains ``audio`` (or ``whisper``) followed by Whisper's ``encoder.``/``decoder.``, and an
``audio``-named projector with Linear layers 0 and 2. Every key must find its place: any left
over stops the import with their list, never a silent partial load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROJECTOR_PREFIX = "model.mm_projector."
VISION_PREFIX = "model.vision_tower.vision_tower."
_AUDIO_TOWER = re.compile(r"^(?:model\.)?[\w.]*?(?:audio|whisper)[\w]*\.(?:[\w]+\.)*?((?:encoder|decoder)\..+)$")
_AUDIO_PROJECTOR = re.compile(r"^(?:model\.)?[\w.]*?audio[\w]*projector[\w]*\.([02]\.(?:weight|bias))$")


class ImportProblem(ValueError):
    """The source cannot be converted; the message lists what is wrong (keys included)."""


def read_state(source: str, hub_file: str) -> dict[str, torch.Tensor]:
    """A state dict from a ``.bin``/``.safetensors`` file, or ``hub_file`` of a hub repo."""
    if os.path.isfile(source):
        path = source
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(source, hub_file)
    if path.endswith(".safetensors"):
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def projector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision projector's weights, keyed as this model's ``vision_projector`` keys them."""
    part = {k[len(PROJECTOR_PREFIX) :]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    if not part:
        raise ValueError(f"no '{PROJECTOR_PREFIX}*' keys in the Bunny projector state dict (found {sorted(state)[:4]})")
    return part


def load_vision_projector(projector: torch.nn.Module, source: str | dict) -> None:
    """Loads Bunny's pretrained vision projector (keys ``model.mm_projector.{0,2}.*``) from a state
    dict, a ``.bin``/``.safetensors`` file, or a hub repo holding ``mm_projector.bin``, into
    ``projector``, after checking that every shape fits."""
    part = projector_state(read_state(source, "mm_projector.bin") if isinstance(source, str) else source)
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in part.items()}
    if expected != got:
        raise ValueError(f"Bunny projector does not fit this model: expected {expected}, got {got}")
    projector.load_state_dict(part)


def save_projectors(folder: Path, vision: dict[str, torch.Tensor], audio: dict[str, torch.Tensor]) -> None:
    """Writes a checkpoint folder's projectors file from the two projectors' state dicts."""
    from .config import PROJECTORS_FILE

    projectors = {f"vision_projector.{k}": v for k, v in vision.items()}
    projectors.update({f"audio_projector.{k}": v for k, v in audio.items()})
    save_file({k: v.detach().contiguous() for k, v in projectors.items()}, str(folder / PROJECTORS_FILE))


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (safetensors shards, or PyTorch .bin shards)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ImportProblem(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(
            load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        )
    return state


def split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Places every key: ``llm``, ``vision``, ``vision_projector``, ``audio``, ``audio_projector``;
    raises ``ImportProblem`` listing the keys that fit nowhere."""
    parts: dict[str, dict[str, torch.Tensor]] = {
        k: {} for k in ("llm", "vision", "vision_projector", "audio", "audio_projector")
    }
    unplaced = []
    for key, value in state.items():
        if key.startswith(VISION_PREFIX):
            parts["vision"][key[len(VISION_PREFIX) :]] = value
        elif key.startswith(PROJECTOR_PREFIX):
            parts["vision_projector"][key[len(PROJECTOR_PREFIX) :]] = value
        elif m := _AUDIO_PROJECTOR.match(key):
            parts["audio_projector"][m.group(1)] = value
        elif m := _AUDIO_TOWER.match(key):
            parts["audio"][m.group(1)] = value
        elif re.match(r"^model\.(embed_tokens|layers\.\d+|final_layernorm)\.|^lm_head\.", key):
            parts["llm"][key] = value
        else:
            unplaced.append(key)
    if unplaced:
        shown = "\n  ".join(sorted(unplaced)[:50])
        more = f"\n  ... and {len(unplaced) - 50} more" if len(unplaced) > 50 else ""
        raise ImportProblem(
            f"{len(unplaced)} weights fit no part of this model (LLM, SigLIP tower, vision projector, "
            f"Whisper tower, audio projector):\n  {shown}{more}"
        )
    for needed in ("llm", "vision", "vision_projector"):
        if not parts[needed]:
            raise ImportProblem(f"the checkpoint has no {needed} weights; is it a Bunny-format merged checkpoint?")
    return parts


def _tower_config(name: str | None, kind: str, fallback):
    """A tower's config from the name the Bunny config gives (a folder, or a hub id we know)."""
    from transformers import AutoConfig

    if name and os.path.isdir(name):
        config = AutoConfig.from_pretrained(name)
        return getattr(config, "vision_config", config) if kind == "vision" else config
    return fallback


def import_bunny(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Converts a Bunny-format merged checkpoint folder into this project's checkpoint folder."""
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM, SiglipVisionModel, WhisperModel

    from .presets import phi2_config
    from .processor import add_media_tokens

    source, target = Path(source), Path(target)
    if not (source / "config.json").exists():
        raise ImportProblem(f"{source}: no config.json (give the folder of a Bunny-format checkpoint)")
    bunny = json.loads((source / "config.json").read_text())
    parts = split(read_folder(source))
    reference = phi2_config()
    config = phi2_config()
    text = {k: v for k, v in bunny.items() if not k.startswith(("mm_", "auto_map", "architectures", "_"))}
    text["model_type"] = "phi"
    config.text_config = PhiConfig(**{k: v for k, v in text.items() if k != "model_type"})
    config.vision_config = _tower_config(bunny.get("mm_vision_tower"), "vision", reference.vision_config)
    audio_name = next((v for k, v in bunny.items() if "audio" in k and "tower" in k and isinstance(v, str)), None)
    config.audio_config = _tower_config(audio_name, "audio", reference.audio_config)
    config.vision_tower, config.llm, config.tokenizer_name, config.vision_projector_init = "vision", "llm", None, None
    config.audio_tower = "audio" if parts["audio"] else (audio_name or reference.audio_tower)
    tokenizer = AutoTokenizer.from_pretrained(source)
    add_media_tokens(tokenizer)
    modules = {
        "vision": (SiglipVisionModel(config.vision_config), parts["vision"], "vision tower"),
        "llm": (PhiForCausalLM(config.text_config), parts["llm"], "LLM"),
    }
    if parts["audio"]:
        modules["audio"] = (WhisperModel(config.audio_config), parts["audio"], "audio tower")
    problems = []
    for module, part, name in modules.values():
        try:
            missing, unexpected = module.load_state_dict(part, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            problems.append(f"{name}: {str(exc).splitlines()[0]}")
            continue
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            problems.append(f"{name}: missing {sorted(missing)[:10]}, not placed {sorted(unexpected)[:10]}")
    if problems:
        raise ImportProblem("the weights do not fit the model they name:\n  " + "\n  ".join(problems))
    target.mkdir(parents=True, exist_ok=True)
    for folder, (module, _, _) in modules.items():
        module.save_pretrained(target / folder)
    tokenizer.save_pretrained(target)
    tokenizer.save_pretrained(target / "llm")  # llm/ stands alone (vLLM loads it as a plain model folder)
    save_projectors(target, parts["vision_projector"], parts["audio_projector"])
    config.save_pretrained(target)
    return target


def main(argv: list[str]) -> int:
    """``python -m model import-bunny SRC DST``."""
    import sys

    source, target = argv
    try:
        out = import_bunny(source, target)
    except ImportProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parts = sorted(p.name for p in out.iterdir())
    print(f"wrote {out} ({', '.join(parts)})")
    if not (out / "audio").exists():
        print(
            "note: the source has no audio branch: the audio tower is referenced by hub id and the audio "
            "projector is untrained (train stage 1)"
        )
    return 0
