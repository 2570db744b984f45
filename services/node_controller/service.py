"""The Node Controller: drives the hypervisor through libvirt."""

from __future__ import annotations

from common.service import Service
from services.node_controller.config import NodeControllerConfig


class NodeControllerService(Service):
    role = "nc"
    config_class = NodeControllerConfig
    config: NodeControllerConfig
