"""Each labelled image's bytes (exports, the review page): the cache's image store, else CDF.

A labels file written by the labeler names each image's bytes twice: ``sha256`` (the digest of
the bytes its masks were made on; the image store keeps blobs by it) and ``cdf_file`` (the CDF
reference). :class:`ImageFetcher` reads the store by the former and, for images it lacks,
downloads by the latter through :class:`~cogseg_ml.store.SegmentStore` (which keeps them in the
store for next time). Bytes are checked before use: their SHA-256 must be the labels' (else the
file was replaced in CDF since it was labelled and the masks belong to other pixels), and their
header size the image's ``height`` and ``width``.

:meth:`ImageFetcher.check` finds every image before anything is written: the ones the store
lacks are looked up in CDF first (a missing one is refused up front, by name, before any
download), then downloaded into the store in parallel and checked, so a replaced file is
refused up front too. (The store keeps its size budget, 20 GiB by default: an export larger than
that downloads its earliest images again when it writes them.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cogseg_ml.cache.mask_cache import MaskCache, cache_file
from cogseg_ml.errors import (
    ApiUnavailableError,
    AuthenticationError,
    CogsegError,
    ValidationError,
)
from cogseg_ml.image_decode import DEFAULT_MAX_PIXELS, ORIENTATIONS, read_header
from cogseg_ml.prompts import FileRef

if TYPE_CHECKING:
    from cogseg_ml.cache.image_store import ImageStore
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.store import SegmentStore

__all__ = ["ImageFetcher", "describe_image", "existing_cache"]

_log = logging.getLogger("cogseg_ml.store.image_fetcher")
MAX_LISTED = 5  # missing images named in one error
DOWNLOAD_CHUNK = 64  # images downloaded together (their bytes are in memory at once)


def _images(n: int) -> str:
    return "1 image is" if n == 1 else f"{n} images are"


def describe_image(record: Mapping[str, Any]) -> str:
    """``image 3 ('pump.jpg', CDF file externalId 'pump-1')`` for messages."""
    ref = record.get("cdf_file")
    cdf = ""
    if isinstance(ref, Mapping):
        try:
            cdf = f", CDF file {FileRef.parse(ref).describe()}"
        except CogsegError:
            cdf = ""
    return f"image {record.get('id')} ({record.get('file_name')!r}{cdf})"


def existing_cache(path: str | None, flag: str = "--cache") -> str | None:
    """A cache path given on the command line, checked to hold a mask cache (a typo would
    otherwise read as "no image is cached"); ``None`` (the user cache) stays ``None``.

    Raises:
        ValidationError: no mask cache at ``path``; the message says what to give.
    """
    if path is not None and not cache_file(path).exists():
        raise ValidationError(f"{flag} {path}: no mask cache there; give the {flag} the labels "
                              "were made with, or leave it out")
    return path


class ImageFetcher:
    """Image bytes by COCO image record: the image store by ``sha256``, else CDF.

    Args:
        cache: the mask cache whose image store to read (a path, a :class:`MaskCache`, or
            ``None`` for the default user cache); a path where no cache exists is fine: every
            image then comes from CDF, and downloads start a cache there.
        config: the CDF connection for images the store lacks; ``None`` reads ``COGNITE_*``
            variables when (and only when) an image is missing from the store.
        max_pixels: refuse larger images before decoding them.
        offline: never ask CDF: an image the store lacks is a ``ValidationError``.

    Counts what it served: ``from_cache`` and ``downloaded``. Use as a context manager (closes
    the CDF session).
    """

    def __init__(self, cache: str | Path | MaskCache | None = None,
                 config: CdfConfig | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, offline: bool = False) -> None:
        self._cache_arg = cache
        self.offline = offline
        self.config = config
        self.max_pixels = max_pixels
        self.from_cache = 0
        self.downloaded = 0
        self._images: ImageStore | None = None
        self._store: SegmentStore | None = None
        self._opened = False
        self._downloaded: set[int] = set()  # ids of images check() downloaded

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the CDF session, if one was opened."""
        store, self._store = self._store, None
        if store is not None:
            store.close()

    # --- sources -------------------------------------------------------------------------------
    def _image_store(self) -> ImageStore | None:
        """The cache's image store, or ``None`` when there is no cache (nothing is created)."""
        if not self._opened:
            self._opened = True
            from cogseg_ml.cache.image_store import ImageStore

            cache = self._cache_arg
            if isinstance(cache, MaskCache):
                self._images = ImageStore(cache, max_bytes=None)
            elif cache_file(cache).exists():
                self._images = ImageStore(MaskCache(cache, create=False), max_bytes=None)
        return self._images

    def _stored(self, record: Mapping[str, Any]) -> bytes | None:
        images = self._image_store()
        sha = record.get("sha256")
        if images is None or not isinstance(sha, str):
            return None
        try:
            return images.get_by_digest(sha)
        except ValidationError:  # not a SHA-256: nothing stored under it
            return None

    def _cdf(self) -> SegmentStore:
        if self.offline:
            raise ValidationError("offline: CDF is not asked")
        if self._store is None:
            from cogseg_ml.backends.api_backend import ApiBackend
            from cogseg_ml.config import CdfConfig
            from cogseg_ml.store import SegmentStore

            config = self.config
            if config is None:
                config = CdfConfig.from_env()  # ValidationError naming the missing variables
            cache = self._cache_arg if isinstance(self._cache_arg, MaskCache) \
                else MaskCache(self._cache_arg)
            self._store = SegmentStore(config, cache, ApiBackend(config),
                                       max_pixels=self.max_pixels)
        return self._store

    # --- checks --------------------------------------------------------------------------------
    def check(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Make sure every image can be read before anything is written: the ones the image
        store lacks are looked up in CDF (one metadata call per 1000 files), then downloaded
        into the store (``download_workers`` at a time, checked against their ``sha256``).

        Raises:
            ValidationError: some images are in neither place, were replaced in CDF since
                they were labelled, or CDF is not configured while images are missing from
                the store; the message names them (up to five).
            ApiUnavailableError: CDF cannot be reached for the missing ones.
            AuthenticationError: CDF refused the credentials.
            CacheError: the image store cannot be written (e.g. the disk is full).
        """
        missing = [r for r in records if not self._stored_exists(r)]
        if not missing:
            return
        where = self._where()
        try:
            store = self._cdf()
        except ValidationError as exc:
            raise ValidationError(
                f"{len(missing)} of {len(records)} images {'is' if len(missing) == 1 else 'are'} "
                f"not in the image cache ({where}) and cannot be downloaded from CDF "
                f"({exc}): {self._listed(missing)}") from None
        refs = [FileRef.parse(r["cdf_file"]) for r in missing]
        found = store.resolve(refs)  # every file's existence first: nothing downloaded yet
        problems = []
        for r, ref in zip(missing, refs, strict=True):
            got = found[ref]
            if isinstance(got, (ApiUnavailableError, AuthenticationError)):
                raise got
            if isinstance(got, CogsegError):
                problems.append(f"{describe_image(r)}: {got}")
        self._refuse(problems, f"neither in the image cache ({where}) nor readable in CDF "
                               f"project {store.config.project!r}")
        for i in range(0, len(missing), DOWNLOAD_CHUNK):  # bytes of one chunk in memory
            chunk = missing[i:i + DOWNLOAD_CHUNK]
            for r, rec in zip(chunk, store.records(refs[i:i + DOWNLOAD_CHUNK]), strict=True):
                if isinstance(rec, (ApiUnavailableError, AuthenticationError)):
                    raise rec
                if isinstance(rec, CogsegError):
                    problems.append(f"{describe_image(r)}: {rec}")
                elif isinstance(r.get("sha256"), str) and rec.digest != r["sha256"]:
                    problems.append(f"{describe_image(r)}: its file in CDF was replaced since it "
                                    "was labelled (its SHA-256 differs from the labels' sha256)")
                else:
                    self._downloaded.add(int(r["id"]))
        self._refuse(problems, "changed or unreadable in CDF since labelling")

    @staticmethod
    def _refuse(problems: list[str], what: str) -> None:
        if problems:
            n = len(problems)
            more = f" (and {n - MAX_LISTED} more)" if n > MAX_LISTED else ""
            raise ValidationError(f"{_images(n)} {what}: " + "; ".join(problems[:MAX_LISTED])
                                  + more)

    def _stored_exists(self, record: Mapping[str, Any]) -> bool:
        images = self._image_store()
        sha = record.get("sha256")
        return bool(images is not None and isinstance(sha, str) and images.has_digest(sha))

    def _where(self) -> str:
        return str(cache_file(self._cache_arg.path if isinstance(self._cache_arg, MaskCache)
                              else self._cache_arg).parent / "images")

    @staticmethod
    def _listed(records: Sequence[Mapping[str, Any]]) -> str:
        named = ", ".join(describe_image(r) for r in records[:MAX_LISTED])
        return named + (f" (and {len(records) - MAX_LISTED} more)"
                        if len(records) > MAX_LISTED else "")

    # --- bytes ---------------------------------------------------------------------------------
    def get(self, record: Mapping[str, Any]) -> tuple[bytes, str | None]:
        """The image's bytes and format (Pillow's name: ``"PNG"``, ``"JPEG"``, ...).

        Raises:
            ValidationError: the image is missing, its bytes are not the ones it was labelled
                on (SHA-256), not an image, or not of its labelled size.
            ApiUnavailableError, AuthenticationError: downloading it failed so.
        """
        data = self._stored(record)
        if data is not None:
            if int(record["id"]) in self._downloaded:
                self.downloaded += 1
            else:
                self.from_cache += 1
        else:
            data = self._download(record)
            self.downloaded += 1
        try:
            header = read_header(data, None, self.max_pixels)
        except CogsegError as exc:
            raise ValidationError(f"{describe_image(record)}: {exc}") from None
        if (header.height, header.width) != (record["height"], record["width"]):
            raise ValidationError(
                f"{describe_image(record)} is {header.height}x{header.width} pixels but its "
                f"labels are for {record['height']}x{record['width']}: the file was replaced "
                "since it was labelled; label it again")
        if header.orientation != 1:
            _log.warning("%s has EXIF orientation %d (%s): its masks are in the stored frame; "
                         "tools that apply EXIF orientation show the image turned against them",
                         describe_image(record), header.orientation,
                         ORIENTATIONS.get(header.orientation, "unknown"))
        return data, header.format

    def _download(self, record: Mapping[str, Any]) -> bytes:
        try:
            store = self._cdf()
        except ValidationError as exc:
            raise ValidationError(f"{describe_image(record)} is not in the cache's images "
                                  f"({self._where()}) and cannot be downloaded ({exc})") from None
        try:
            data, _ = store.image(FileRef.parse(record["cdf_file"]))
        except (ApiUnavailableError, AuthenticationError):
            raise
        except CogsegError as exc:
            raise ValidationError(f"{describe_image(record)} is not in the image cache and "
                                  f"cannot be read from CDF: {exc}") from None
        sha = record.get("sha256")
        if isinstance(sha, str) and hashlib.sha256(data).hexdigest() != sha:
            raise ValidationError(
                f"{describe_image(record)}: its file in CDF was replaced since it was labelled "
                "(the bytes' SHA-256 differs from the labels' sha256), so its masks belong to "
                "other pixels; label it again")
        return data
