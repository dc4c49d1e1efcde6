"""The multipart form of ``POST /v1/video/chat``: its published fields, and their parsing into a
:class:`~service.protocol.ChatRequest`, every field checked for type and range (a wrong one is a
422 or 400 naming it)."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from model import modalities
from model.media import Window

from .errors import BadParameter, InvalidFields
from .protocol import MAX_NAME_CHARS, ChatRequest, MediaRef, SamplingFields, check_stop, form_messages, validate


class VideoChatForm(BaseModel):
    """Fields of ``POST /v1/video/chat`` (multipart/form-data): what the OpenAPI schema publishes."""

    video: bytes | None = Field(None, description="the video (or audio) file; or send video_id")
    image: bytes | None = Field(None, description="a still image (png, jpeg, webp, gif), read as a one-frame video")
    video_id: str | None = Field(None, description="a video_id from an earlier answer (or a registered uuid)")
    uuid: str | None = Field(None, description="a name for this upload, to refer to it later as video_id")
    messages: str | None = Field(None, description="OpenAI-style messages as a JSON array (text content)")
    prompt: str | None = Field(None, description="a single question, instead of messages")
    stream: bool = False
    stream_options: str | None = Field(None, description='JSON, e.g. {"include_usage": true}')
    max_tokens: int | None = Field(None, ge=1, description="default: the checkpoint's generation config, else 256")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="default: the checkpoint's (demo: greedy)")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    ignore_eos: bool = Field(False, description="generate max_tokens whatever (vLLM's extra; for benchmarks)")
    max_audio_windows: int | None = Field(
        None, ge=1, le=64, description="hear at most this many 30 s audio windows (default: all that fit)"
    )
    stop: str | None = Field(None, description="a stop string, or a JSON array of up to 4")
    input_modalities: str | None = Field(None, description="audio,video (default), video, or audio")
    modalities: str | None = Field(None, description="the same as input_modalities (kept for older clients)")
    start: float | None = Field(None, description="analyse from this second of the file")
    end: float | None = Field(None, description="analyse up to this second of the file")


FILE_FIELDS = ("video", "image")


def parse_form(fields: dict[str, str], file_field: str | None) -> ChatRequest:
    data = {k: v for k, v in fields.items() if v != ""}
    unknown = set(data) - set(VideoChatForm.model_fields) - set(FILE_FIELDS)
    if unknown:
        raise InvalidFields(f"unknown form field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    stream = _form_bool(data.get("stream", "false"), "stream")
    include_usage = False
    if "stream_options" in data:
        options = _form_json(data["stream_options"], "stream_options")
        if not isinstance(options, dict):
            raise InvalidFields("stream_options must be a JSON object", param="stream_options")
        include_usage = _form_bool(options.get("include_usage", False), "stream_options")
    messages = None
    if "messages" in data:
        messages = _form_json(data["messages"], "messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidFields("`messages` must be a JSON array of {role, content} objects", param="messages")
        messages = form_messages(messages)
        if "prompt" in data:
            raise BadParameter("send either messages or prompt, not both", param="messages")
    elif data.get("prompt", "").strip():
        messages = [{"role": "user", "content": data["prompt"]}]
    else:
        raise BadParameter("ask something: send `prompt` or `messages`", param="prompt")
    stop = data.get("stop")
    if stop is not None and stop.startswith("["):
        stop = _form_json(stop, "stop")
    mods = data.get("input_modalities", data.get("modalities"))
    if mods is not None and mods.startswith("["):
        mods = _form_json(mods, "input_modalities")
    sampling = validate(SamplingFields, {k: data[k] for k in SamplingFields.model_fields if k in data})
    media = _form_media(data, file_field)
    window = Window.of(sampling.start, sampling.end)
    if window is not None and media is not None and media.kind != "upload":
        raise BadParameter("start and end apply when the video itself is sent", param="start")
    if media is not None:
        media.window = window
    return ChatRequest(
        messages=messages,
        media=[] if media is None else [media],
        input_modalities=None if mods is None else modalities.check(mods, "input_modalities"),
        stream=stream,
        include_usage=include_usage,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        ignore_eos=sampling.ignore_eos,
        max_audio_windows=sampling.max_audio_windows,
        stop=check_stop(stop),
    )


def _form_media(data: dict, file_field: str | None) -> MediaRef | None:
    for name in ("video_id", "uuid"):
        if len(data.get(name, "")) > MAX_NAME_CHARS:
            raise InvalidFields(f"{name}: at most {MAX_NAME_CHARS} characters", param=name)
    video_id = data.get("video_id")
    if file_field is not None and video_id:
        raise BadParameter("send either a file or a video_id, not both", param="video_id")
    if file_field is not None:
        return MediaRef("upload", file_field, alias=data.get("uuid"))
    if video_id:
        return MediaRef("video_id", "video_id", video_id)
    if data.get("uuid"):
        return MediaRef("uuid", "uuid", data["uuid"])
    return None


def _form_json(text: str, param: str):
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidFields(f"`{param}` is nested too deeply", param=param) from None
    except json.JSONDecodeError:
        raise InvalidFields(f"`{param}` must be JSON", param=param) from None


def _form_bool(value, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise InvalidFields(f"{param}: expected true or false", param=param)
