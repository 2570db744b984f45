"""What each part of the compute engine (launch.Launcher, reports.Reports, polling.Poller) starts from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.cloud_controller.compute.engine import Compute


class EnginePart:
    """One job of the compute engine: it reads and writes the engine's records (`store`) by its `settings`, talks
    to the zones through the CC client (`cc`) and reaches the engine's other parts through `engine`."""

    def __init__(self, engine: Compute):
        self.engine = engine
        self.store, self.settings, self.cc = engine.store, engine.settings, engine.cc
