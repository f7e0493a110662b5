"""A per-process in-memory cache of decoded items with a byte budget."""

from __future__ import annotations

from typing import Any, Callable

DEFAULT_BYTES = 1 << 30     # per dataset and process; items beyond it are re-read from disk


class BoundedCache:
    """``get(key, load, size)``: the cached value of ``key``, or ``load()`` kept while the total of
    ``size(value)`` stays within ``max_bytes`` (first come, first kept; the rest is re-read).
    ``max_bytes=0`` keeps nothing."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: dict[Any, Any] = {}

    def get(self, key, load: Callable[[], Any], size: Callable[[Any], int]):
        if key in self._items:
            return self._items[key]
        value = load()
        n = size(value)
        if self.bytes + n <= self.max_bytes:
            self._items[key] = value
            self.bytes += n
        return value

    def __len__(self) -> int:
        return len(self._items)
