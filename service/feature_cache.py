"""The features behind follow-ups: the in-process LRU (L1) in front of the shared store (L2,
``feature_store.py``, when configured). A video belongs to the key that uploaded it: another
owner's entry is reported as absent, in both tiers."""

from __future__ import annotations

import hmac
from collections import OrderedDict

from .feature_store import VIDEO_ID, CachedMedia, FeatureStore
from .metrics import METRICS


class FeatureCache:
    """LRU of :class:`CachedMedia` under a byte budget, plus each owner's uuid aliases."""

    MAX_ALIASES = 100_000  # names of at most 256 characters: under 60 MB in all

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[str, CachedMedia] = OrderedDict()
        self._aliases: OrderedDict[tuple[str, str], str] = OrderedDict()

    def get(self, owner: str, video_id: str) -> CachedMedia | None:
        """The entry, if this owner has it (another owner's is reported as absent)."""
        video_id = self._aliases.get((owner, video_id), video_id)
        item = self._items.get(video_id)
        if item is None or not hmac.compare_digest(item.owner, owner):
            METRICS.cache.labels("miss").inc()
            return None
        self._items.move_to_end(video_id)
        METRICS.cache.labels("hit").inc()
        return item

    def put(self, item: CachedMedia) -> None:
        if item.nbytes > self.budget:
            return
        if item.video_id in self._items:
            self.used -= self._items.pop(item.video_id).nbytes
        self._items[item.video_id] = item
        self.used += item.nbytes
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)
            self.used -= old.nbytes

    def alias(self, owner: str, name: str, video_id: str) -> None:
        self._aliases[(owner, name)] = video_id
        self._aliases.move_to_end((owner, name))
        while len(self._aliases) > self.MAX_ALIASES:
            self._aliases.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class FeatureTiers:
    """Lookups in L1, then L2 (a hit there is kept in L1); writes to both, L2 in the background."""

    def __init__(self, cache: FeatureCache, store: FeatureStore | None):
        self.cache, self.store = cache, store

    async def get(self, owner: str, name: str) -> CachedMedia | None:
        """By video_id or uuid."""
        item = self.cache.get(owner, name)
        if item is not None or self.store is None:
            return item
        video_id = name if VIDEO_ID.fullmatch(name) else await self.store.resolve(owner, name)
        if video_id is None:
            return None
        if video_id != name and (item := self.cache.get(owner, video_id)) is not None:
            return item
        item = await self.store.get(owner, video_id)
        if item is not None:
            self.cache.put(item)
        return item

    def put(self, item: CachedMedia) -> None:
        self.cache.put(item)
        if self.store is not None:
            self.store.put(item)

    def alias(self, owner: str, name: str, video_id: str) -> None:
        self.cache.alias(owner, name, video_id)
        if self.store is not None:
            self.store.alias(owner, name, video_id)
