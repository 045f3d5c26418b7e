"""The online monitor as a live Jupyter widget: the views over a monitor engine.

* :mod:`.base` - :class:`AbstractMonitor`, the collaboration's API, delegating
  to a :class:`~astropix_nbmonitor.engine.MonitorEngine`;
* :mod:`.panels` - plots as panels (hit map, TOT spectrum, rates, the selected pixel);
* :mod:`.shift` - alarms, noisy pixels and masks on every monitor;
* :mod:`.board` - the dashboard's status lines and messages;
* :mod:`.astropix4` - :class:`AstroPix4SimpleMonitor`, panels and toolbar;
* :mod:`.registry` - one monitor per address in a process.
"""

from __future__ import annotations

from ..sock import LOCAL_HOST
from .astropix4 import AstroPix4SimpleMonitor
from .base import AbstractMonitor
from .board import NO_DATA_WARNING_S
from .panels import HitMapPanel, Panel, PixelPanel, RatePanel, TotPanel

__all__ = [
    "LOCAL_HOST",
    "NO_DATA_WARNING_S",
    "AbstractMonitor",
    "AstroPix4SimpleMonitor",
    "HitMapPanel",
    "Panel",
    "PixelPanel",
    "RatePanel",
    "TotPanel",
]
