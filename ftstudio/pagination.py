"""Pagination helpers shared by the list pages."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property


class CountedPaginator(Paginator):
    """A `Paginator` told its total when the caller knows it already (e.g. from a GROUP BY it ran for the page's
    counts), so paging skips the COUNT(*); with ``count=None`` it counts as usual."""

    def __init__(self, object_list, per_page, *, count: int | None = None, **kwargs) -> None:
        super().__init__(object_list, per_page, **kwargs)
        self._known_count = count

    @cached_property
    def count(self) -> int:
        if self._known_count is not None:
            return self._known_count
        return super().count
