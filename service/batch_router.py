"""The routes of OpenAI's Files and Batches APIs (``batches.py`` holds their logic), so the
official SDK's ``client.files`` and ``client.batches`` work unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from . import paths
from .admission import BodyAccount
from .deps import Ready
from .errors import BadParameter
from .intake import body_reader, declared_length, read_small_json
from .protocol import validate
from .responses import ErrorResponse
from .uploads import read_form

router = APIRouter(tags=["batch"])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)}


def _owner(request: Request) -> str:
    return request.scope.get("state", {}).get("owner", "")


class BatchCreate(BaseModel):
    input_file_id: str = Field(max_length=64)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post(paths.FILES, responses=ERRORS)
async def upload_file(request: Request, state: Ready) -> dict:
    """Upload a JSON-lines input file (multipart: `file`, `purpose=batch`)."""
    s = state.settings
    account = BodyAccount(state.admission, declared_length(request.headers, s.batch_max_file_bytes, "file"))
    try:
        form = await read_form(
            request.headers.get("content-type", ""),
            body_reader(request, s, s.batch_max_file_bytes, account, "file"),
            s.temp_dir,
            s.batch_max_file_bytes,
            ("file",),
            4,
            4096,
        )
    finally:
        account.close()
    if form.file is None:
        raise BadParameter("send the file as the multipart field `file`", param="file")
    try:
        owner, purpose = _owner(request), form.fields.get("purpose", "")
        return state.batches.add_file(owner, purpose, form.file_name or "input.jsonl", form.file)
    finally:
        form.file.remove()


@router.get(paths.FILES, responses=ERRORS)
async def list_files(request: Request, state: Ready, purpose: str | None = None) -> dict:
    """This key's files."""
    return {"object": "list", "data": state.batches.store.files(_owner(request), purpose), "has_more": False}


@router.get(paths.FILES + "/{file_id}", responses=ERRORS)
async def get_file(file_id: str, request: Request, state: Ready) -> dict:
    return state.batches.file(_owner(request), file_id)


@router.get(paths.FILES + "/{file_id}/content", responses=ERRORS)
async def file_content(file_id: str, request: Request, state: Ready) -> FileResponse:
    """The file's bytes (an input file, or a batch's output or error file)."""
    found = state.batches.file(_owner(request), file_id)
    path = state.batches.store.file_path(file_id)
    return FileResponse(path, media_type="application/jsonl", filename=found["filename"])


@router.delete(paths.FILES + "/{file_id}", responses=ERRORS)
async def delete_file(file_id: str, request: Request, state: Ready) -> dict:
    state.batches.file(_owner(request), file_id)
    state.batches.store.delete_file(_owner(request), file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post(paths.BATCHES, responses=ERRORS)
async def create_batch(request: Request, state: Ready) -> dict:
    """Start a batch over an uploaded file of /v1/chat/completions lines."""
    body: Any = await read_small_json(request, state.settings, state.admission)
    if not isinstance(body, dict):
        raise BadParameter("the body must be a JSON object", param=None)
    req = validate(BatchCreate, body)
    return state.batches.create(_owner(request), req.input_file_id, req.endpoint, req.completion_window, req.metadata)


@router.get(paths.BATCHES, responses=ERRORS)
async def list_batches(request: Request, state: Ready, limit: int = 20, after: str | None = None) -> dict:
    data = state.batches.store.batches(_owner(request), max(1, min(limit, 100)), after)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


@router.get(paths.BATCHES + "/{batch_id}", responses=ERRORS)
async def get_batch(batch_id: str, request: Request, state: Ready) -> dict:
    return state.batches.get(_owner(request), batch_id)


@router.post(paths.BATCHES + "/{batch_id}/cancel", responses=ERRORS)
async def cancel_batch(batch_id: str, request: Request, state: Ready) -> dict:
    return state.batches.cancel(_owner(request), batch_id)
