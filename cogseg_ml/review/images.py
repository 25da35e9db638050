"""Where the review page gets each image's bytes: a
:class:`~cogseg_ml.store.image_fetcher.ImageFetcher`
(the cache's image store by the record's ``sha256``, else CDF by its ``cdf_file``; bytes that no
longer hash to ``sha256`` are refused, since the masks belong to other pixels).

The page draws a mask without its image on grey and notes why, so a source here gives the
bytes or the reason there are none (a string), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cogseg_ml.errors import CogsegError
from cogseg_ml.store.image_fetcher import ImageFetcher

__all__ = ["ImageSource", "fetched"]

#: a COCO image record to its bytes, or the reason there are none
ImageSource = Callable[[Mapping[str, Any]], "bytes | str"]


def fetched(fetcher: ImageFetcher) -> ImageSource:
    """The fetcher's bytes for each record, or its error's message as the reason."""

    def get(record: Mapping[str, Any]) -> bytes | str:
        try:
            return fetcher.get(record)[0]
        except CogsegError as exc:
            return str(exc)

    return get
