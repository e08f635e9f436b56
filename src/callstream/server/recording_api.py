"""`GET /v1/calls/{call_id}/recording` (docs/recordings.md): a call's WAV, with range requests.

Scope `listen`: a recording holds what the transcript's redaction took out (a card number said
aloud), so a credential that may only read transcripts (`subscribe`) does not get it.
Starlette's `FileResponse` answers `Range` (one range → 206, several → multipart/byteranges, one
past the end → 416 with `Content-Range: bytes */size`) and `If-Range`; a `Range` it cannot read
gets the whole file, and the whole file is what its `Content-Length` said (`WavResponse`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response
from starlette.types import Send

from callstream.auth import Principal
from callstream.events import is_valid_call_id
from callstream.server.deps import not_found, require, runtime_of

router = APIRouter()
Listener = Annotated[Principal, Depends(require("listen"))]

WAV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"audio/wav": {}}, "description": "the whole WAV (2 channels: caller left, agent right)"},
    206: {"content": {"audio/wav": {}}, "description": "the range asked for (`Range: bytes=…`)"},
    416: {"description": "a range past the end (`Content-Range: bytes */size`)"},
}


class WavResponse(FileResponse):
    """A `FileResponse` that ignores a `Range` header it cannot read (another unit, no valid
    range) and sends the whole file: RFC 9110 says a server MUST ignore a unit it does not
    know, and Starlette's own answer, a plain-text 400, is not the API's JSON error.

    The whole file is sent as it was when stat'd: a call that speaks again after its file was
    closed goes on writing that very file (`recording_files.open_for`), and Starlette reads to
    its end, past the `Content-Length` sent, which breaks the response."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # no range: the whole file

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        if send_header_only or self.stat_result is None:
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        left = self.stat_result.st_size
        async with self._open_file() as file:
            while True:
                chunk = await file.read(min(self.chunk_size, left))
                left -= len(chunk)
                more = bool(chunk) and left > 0
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return


@router.get("/v1/calls/{call_id}/recording", tags=["calls"], response_class=FileResponse, responses=WAV_RESPONSE)
async def get_recording(call_id: str, request: Request, principal: Listener) -> Response:
    """The call's recording, once its file is closed (a moment after `call.ended`, or once its
    node died and nobody wrote it for a minute). 404, the same answer, for a call with no
    recording, a missing call and another account's call."""
    visible = is_valid_call_id(call_id) and principal.may_see(call_id)
    recordings = runtime_of(request).recordings
    paths = recordings.paths(principal.account, call_id) if visible else None
    if paths is None or (stat := await recordings.finished(paths)) is None:
        raise not_found("recording")
    return WavResponse(paths.finished, media_type="audio/wav", stat_result=stat)


# HEAD answers what GET would, without the body (download managers and `curl -I` ask it first);
# kept out of the OpenAPI document, where it would repeat GET's operation.
router.add_api_route(
    "/v1/calls/{call_id}/recording", get_recording, methods=["HEAD"], include_in_schema=False, tags=["calls"]
)
