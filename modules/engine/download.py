"""Download model files (the first-run default checkpoint): resumable, checksum-verified, stdlib urllib only.

A1111 downloads ``v1-5-pruned-emaonly.safetensors`` into ``models/Stable-diffusion`` on first start when no
checkpoint exists. This module does the transfer: it writes ``<filename>.part``, resumes it with an HTTP ``Range``
request, verifies the SHA-256, and only then renames it into place. Proxies come from the usual
``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` environment variables, read at each call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modules.engine.hashes import sha256_file
from modules.errors import DownloadError

logger = logging.getLogger(__name__)

HF_ENDPOINT = "https://huggingface.co"
"""Default Hugging Face endpoint; A1111 lets ``HF_ENDPOINT`` point elsewhere (a mirror)."""

DEFAULT_MODEL_PATH = "stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"

CHUNK_SIZE = 256 * 1024
"""Bytes read per step; also how often progress is reported and ``should_stop`` is polled."""

USER_AGENT = "stable-diffusion-webui-downloader (Python urllib)"

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes on disk so far, total size or None when the server does not say)."""

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelDownload:
    """A file to download.

    Attributes:
        url: Where to fetch it (http or https; redirects are followed).
        filename: Name of the file in the destination folder.
        sha256: Expected hex digest, or None to skip verification.
    """

    url: str
    filename: str
    sha256: str | None = None


DEFAULT_MODEL = ModelDownload(
    url=f"{HF_ENDPOINT}/{DEFAULT_MODEL_PATH}",
    filename="v1-5-pruned-emaonly.safetensors",
    sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
)
"""The checkpoint A1111 downloads on first start (Stable Diffusion 1.5, EMA-only weights)."""


def default_model(hf_endpoint: str = HF_ENDPOINT) -> ModelDownload:
    """Return ``DEFAULT_MODEL`` fetched from another Hugging Face endpoint (A1111's ``HF_ENDPOINT``).

    >>> default_model("https://hf-mirror.example/").url.split("/")[2]
    'hf-mirror.example'
    """
    return dataclasses.replace(DEFAULT_MODEL, url=f"{hf_endpoint.rstrip('/')}/{DEFAULT_MODEL_PATH}")


def wants_default_model(found_count: int, *, no_download_sd_model: bool, ckpt_given: bool) -> bool:
    """Apply A1111's first-start rule: download only if nothing is installed, it is allowed, and no --ckpt exists.

    Args:
        found_count: Number of checkpoints the scan found.
        no_download_sd_model: The ``--no-download-sd-model`` flag.
        ckpt_given: Whether ``--ckpt`` names an existing file (or differs from its default ``model.ckpt``).

    >>> wants_default_model(0, no_download_sd_model=False, ckpt_given=False)
    True
    >>> wants_default_model(0, no_download_sd_model=True, ckpt_given=False)
    False
    """
    return found_count == 0 and not no_download_sd_model and not ckpt_given


@dataclasses.dataclass(slots=True)
class _Transfer:
    """What one download has on disk so far; the digest always covers exactly ``done`` bytes of ``part``."""

    spec: ModelDownload
    part: Path
    done: int = 0
    total: int | None = None
    digest: Any = dataclasses.field(default_factory=hashlib.sha256)

    @classmethod
    def resume(cls, spec: ModelDownload, part: Path) -> _Transfer:
        transfer = cls(spec, part)
        if part.exists():
            with part.open("rb") as file:
                while block := file.read(1 << 20):
                    transfer.digest.update(block)
                    transfer.done += len(block)
        return transfer

    def restart(self) -> None:
        self.part.write_bytes(b"")
        self.done = 0
        self.total = None
        self.digest = hashlib.sha256()

    def failure(self, reason: str) -> str:
        """Build the user-facing message for a failed download."""
        return (
            f"Could not download {self.spec.filename} from {self.spec.url}: {reason}. Put a .safetensors or .ckpt "
            f"checkpoint into {self.part.parent} yourself, or check your network/proxy."
        )


def _describe(error: BaseException, timeout: float) -> str:
    """Turn a urllib/socket error into a short human reason."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ValueError):
        return f"invalid URL ({error})"
    return str(reason) or type(reason).__name__


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def _accept_response(transfer: _Transfer, response: http.client.HTTPResponse) -> bool:
    """Line the transfer up with the response; False when a partial response does not start where we are."""
    length = _content_length(response)
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match and int(match[1]) == transfer.done:
            transfer.total = int(match[3]) if match[3] != "*" else None
            if transfer.total is None and length is not None:
                transfer.total = transfer.done + length
            return True
        logger.warning("Unexpected Content-Range %r; restarting the download.", response.headers.get("Content-Range"))
        transfer.restart()
        return False
    if transfer.done:
        logger.warning("The server ignored the Range request; restarting %s from zero.", transfer.spec.filename)
        transfer.restart()
    transfer.total = length
    return True


def _copy_body(
    transfer: _Transfer,
    response: http.client.HTTPResponse,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> str | None:
    """Append the body to the .part file; return None when complete, else why it ended early."""
    try:
        with transfer.part.open("ab") as file:
            while True:
                if should_stop is not None and should_stop():
                    raise DownloadError(
                        f"The download of {transfer.spec.filename} was stopped; {transfer.done} bytes are kept in "
                        f"{transfer.part} and the next try resumes from there."
                    )
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as error:
                    return f"the connection broke ({error or type(error).__name__})"
                if not chunk:
                    break
                file.write(chunk)
                transfer.digest.update(chunk)
                transfer.done += len(chunk)
                if on_progress is not None:
                    on_progress(transfer.done, transfer.total)
    except OSError as error:
        raise DownloadError(
            f"Cannot write {transfer.part}: {error}. Free some disk space or fix permissions."
        ) from error
    if transfer.total is not None and transfer.done < transfer.total:
        return "the connection closed early"
    return None


def _fetch_once(
    opener: urllib.request.OpenerDirector,
    transfer: _Transfer,
    timeout: float,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> str | None:
    """Make one request from ``transfer.done`` on; return None when the file is complete, else why not.

    Raises:
        DownloadError: The request failed outright (DNS, refused, timeout, HTTP error status).
    """
    ranged = transfer.done > 0
    headers = {"User-Agent": USER_AGENT}
    if ranged:
        headers["Range"] = f"bytes={transfer.done}-"
    try:
        response = opener.open(urllib.request.Request(transfer.spec.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and transfer.done:  # nothing left past our offset: the .part is already whole
            transfer.total = transfer.done
            return None
        raise DownloadError(transfer.failure(_describe(error, timeout))) from error
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise DownloadError(transfer.failure(_describe(error, timeout))) from error
    with response:
        if not _accept_response(transfer, response):
            if not ranged:
                raise DownloadError(transfer.failure("the server sent a partial response that was not asked for"))
            response.close()
            return _fetch_once(opener, transfer, timeout, on_progress, should_stop)  # from zero: no Range this time
        if transfer.done and on_progress is not None:
            on_progress(transfer.done, transfer.total)
        return _copy_body(transfer, response, on_progress, should_stop)


def _fetch_with_resume(
    transfer: _Transfer,
    timeout: float,
    retries: int,
    on_progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Fetch until the file is whole, resuming up to ``retries`` times after drops that made progress."""
    opener = urllib.request.build_opener()  # a fresh opener reads the proxy environment now
    for attempt in range(retries + 1):
        before = transfer.done
        cut = _fetch_once(opener, transfer, timeout, on_progress, should_stop)
        if cut is None:
            return
        if transfer.done == before or attempt == retries:
            raise DownloadError(
                transfer.failure(f"{cut} after {transfer.done} of {transfer.total or '?'} bytes")
                + f" The partial file {transfer.part} is kept; the next try resumes it."
            )
        logger.warning(
            "Download of %s interrupted (%s); resuming at byte %d.", transfer.spec.filename, cut, transfer.done
        )


def _check_existing(spec: ModelDownload, final: Path) -> Path:
    """Return an already-downloaded file if it is the expected one; never overwrite it."""
    if spec.sha256 is None:
        return final
    try:
        actual = sha256_file(final)
    except OSError as error:
        raise DownloadError(f"{final} exists but cannot be read: {error}.") from error
    if actual != spec.sha256.lower():
        raise DownloadError(
            f"{final} already exists but its sha256 is {actual}, not the expected {spec.sha256}. It was left "
            "untouched; move it away to download a fresh copy."
        )
    return final


def _finish(transfer: _Transfer, final: Path) -> Path:
    """Verify the checksum of the complete .part file and move it into place atomically."""
    actual = transfer.digest.hexdigest()
    expected = transfer.spec.sha256
    if expected is not None and actual != expected.lower():
        transfer.part.unlink(missing_ok=True)
        raise DownloadError(
            transfer.failure(f"the downloaded file's sha256 is {actual}, not the expected {expected} (deleted)")
        )
    transfer.part.replace(final)
    logger.info("Downloaded %s (%d bytes).", final, transfer.done)
    return final


def download_file(
    spec: ModelDownload,
    dest_dir: Path,
    *,
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    timeout: float = 30,
    retries: int = 3,
) -> Path:
    """Download ``spec`` into ``dest_dir``, resuming a previous ``.part`` file, and verify its SHA-256.

    Args:
        spec: What to fetch and how to check it.
        dest_dir: Folder to put the file in (created if missing).
        on_progress: Receives (bytes done, total bytes or None) after each chunk.
        should_stop: Polled between chunks; when it returns True the download stops, keeping the ``.part``.
        timeout: Seconds to wait for a connection or for data before giving up.
        retries: How many times to resume after the connection drops mid-transfer (each try must make progress).

    Returns:
        The path of the complete file. An existing file of that name is returned, never replaced.

    Raises:
        DownloadError: Network or HTTP failure, checksum mismatch, stop request, or a file system error.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / spec.filename
    # 1. A file already in place is only checked, never overwritten.
    if final.exists():
        return _check_existing(spec, final)
    # 2. Pick up whatever an earlier try left in the .part file.
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        transfer = _Transfer.resume(spec, final.with_name(f"{spec.filename}.part"))
    except OSError as error:
        raise DownloadError(f"Cannot prepare {dest_dir} for {spec.filename}: {error}.") from error
    logger.info("Downloading %s to %s (%d bytes already there)", spec.url, final, transfer.done)
    # 3. Fetch; after a dropped connection, resume as long as each try made progress.
    _fetch_with_resume(transfer, timeout, retries, on_progress, should_stop)
    # 4. Verify and move into place.
    return _finish(transfer, final)
