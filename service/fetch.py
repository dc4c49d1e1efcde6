"""Media named by URL: http(s) from allowed origins, and file:// from one allowed local folder.

* An http(s) URL must match an allowed origin exactly: scheme, host and port.
* Its host is resolved once; an address that is loopback, private, link-local or otherwise not
  public is refused unless the origin was allowed by that IP literal. The connection goes to
  the address that was checked (a second DNS answer cannot swap it), with the name kept for the
  Host header and TLS.
* Every failure of an allowed fetch gives the client one uniform message, so the service cannot
  be used to scan ports or read status codes; the log keeps the reason.
* file:// paths are resolved (symlinks and ``..``) before they are checked against the folder.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from urllib.parse import unquote, urlsplit

from .admission import Upload
from .errors import BadParameter, FetchRefused
from .uploads import TempVideo, TempWriter

log = logging.getLogger("avchat.fetch")
DEFAULT_PORTS = {"http": 80, "https": 443}
UNIFORM = "could not fetch the video_url; check that it is reachable and serves the file"


def parse_origin(entry: str) -> tuple[str, str, int]:
    """``https://host[:port]``, ``http://host[:port]`` or a bare ``host[:port]`` (https)."""
    parts = urlsplit(entry if "://" in entry else "https://" + entry)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 0)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not ip.is_multicast


def _split(url: str, param: str):
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError:  # a malformed IPv6 literal, a port that is not a number
        raise BadParameter(f"{param} is not a valid URL", param=param) from None


async def fetch_url(
    url: str, allowed: list[str], temp_dir: str, limit: int, timeout: float, place: Upload, param: str = "video_url"
) -> TempVideo:
    """Downloads an allowed http(s) URL to a temp file, streaming, all of it within ``timeout``
    seconds; the file keeps the upload ``place`` (its rate counts, so a slow origin can lose it
    to a faster upload)."""
    parts, port = _split(url, param)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = port or DEFAULT_PORTS.get(scheme, 0)
    if scheme not in DEFAULT_PORTS:
        raise BadParameter(f"{param} must be a data: URL or an http(s) URL", param=param)
    if (scheme, host, port) not in {parse_origin(a) for a in allowed}:
        raise BadParameter(
            f"this service does not fetch media from {scheme}://{host or '?'}:{port}; send it as a "
            "data: URL (the operator can allow origins with AVCHAT_ALLOWED_VIDEO_HOSTS)",
            param=param,
            code="host_not_allowed",
        )
    import httpx

    state = {"writer": None}

    async def download() -> TempVideo:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=0, proto=6)
        address = infos[0][4][0]
        if not _is_ip(host) and not _public(address):
            raise _Refused(f"{host} resolves to the non-public address {address}")
        target = parts._replace(netloc=f"[{address}]:{port}" if ":" in address else f"{address}:{port}").geturl()
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1]}
        writer = state["writer"] = TempWriter(temp_dir, limit, param)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "GET", target, headers=headers, extensions={"sni_hostname": host} if scheme == "https" else None
            )
            response = await client.send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise _Refused(f"HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    place.add(len(chunk))
                    writer.write(chunk)
            finally:
                await response.aclose()
        place.finished_receiving()
        state["writer"] = None
        return writer.done(place)

    try:
        # httpx's timeout is per read: the whole download has its own deadline.
        return await asyncio.wait_for(download(), timeout)
    except (_Refused, OSError, asyncio.TimeoutError, httpx.HTTPError) as exc:
        log.warning("fetch failed", extra={"fields": {"url": f"{scheme}://{host}:{port}", "reason": str(exc)}})
        raise FetchRefused(UNIFORM, param=param) from None
    finally:
        if state["writer"] is not None:
            state["writer"].discard()


class _Refused(Exception):
    pass


def local_file(url: str, root: str | None, param: str = "video_url") -> TempVideo:
    """A file:// URL inside the allowed local folder, used in place (never removed)."""
    if not root:
        raise BadParameter(
            "this service does not read file:// URLs (the operator can allow a folder with "
            "AVCHAT_ALLOWED_LOCAL_MEDIA_PATH)",
            param=param,
            code="local_files_not_allowed",
        )
    parts, _ = _split(url, param)
    if parts.netloc not in ("", "localhost"):
        raise BadParameter("a file:// URL names a local path (file:///path/to/clip.mp4)", param=param)
    name = unquote(parts.path)
    if "\0" in name:
        raise BadParameter("a file:// URL's path has a NUL byte in it", param=param)
    path = os.path.realpath(name)
    base = os.path.realpath(root)
    if os.path.commonpath([path, base]) != base:
        raise BadParameter(
            "that file is outside the folder this service may read", param=param, code="path_not_allowed"
        )
    if not os.path.isfile(path):
        raise BadParameter("no such file in the allowed folder", param=param, code="file_not_found")
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return TempVideo(path, digest.hexdigest(), os.path.getsize(path), owned=False)
