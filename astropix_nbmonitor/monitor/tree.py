"""The widgets a monitor is made of: one walk over a widget tree, for closing it and for resending it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ipywidgets as widgets

__all__ = ["walk_widgets"]


def walk_widgets(root: widgets.Widget, *, synced_only: bool = False, root_attributes: bool = False) -> Iterator[widgets.Widget]:
    """Every widget reachable from ``root`` through traits (children, marks, axes, scales, layouts...), each once.

    ``synced_only`` follows only the traits synced with the front end
    (``keys``), else every trait. ``root_attributes`` also follows the
    root's plain attributes (a monitor's panels and controls), not those of
    the widgets below it. A widget is yielded after what it reaches was
    queued, so the caller may close it at once.
    """
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
            continue
        if isinstance(item, dict):
            stack.extend(item.values())
            continue
        if not isinstance(item, widgets.Widget) or id(item) in seen:
            continue
        seen.add(id(item))
        for name in item.keys if synced_only else item.trait_names():
            try:
                stack.append(getattr(item, name))
            except Exception:  # noqa: BLE001 - a trait that cannot be read holds no widget
                continue
        if root_attributes and item is root:
            stack.extend(vars(item).values())
        yield item
