"""The Walrus suites run on each data store: local files (the default) and a Ceph pool (the session's cluster).

The fixtures (tests/walrus/conftest.py): `walrus_storage` (module scope) gives the settings of a Walrus process
on each store; `store_maker` makes in-process backends on each. `stored_data` lists the data ids a backend's store
holds, whichever it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.ceph import CephSettings
from services.walrus.storage import EmbeddedBackend
from services.walrus.storage.blobs import is_data_id
from services.walrus.storage.files import LocalFiles
from services.walrus.storage.rados_data import RadosBlobs
from tests.ceph import WALRUS_POOL, ceph_settings

STORES = ("local", "rados")


@dataclass
class StoreMaker:
    kind: str
    cluster: Any = None  # CephCluster for rados
    namespace: str = ""

    def backend(self, root: Path) -> EmbeddedBackend:
        """A backend on this store; backends made by one maker share the store (a restart reopens it)."""
        if self.kind == "local":
            return EmbeddedBackend(root)
        settings = CephSettings.model_validate(ceph_settings(self.cluster))
        return EmbeddedBackend(root, blobs=RadosBlobs(settings, WALRUS_POOL, self.namespace))


def stored_data(backend: EmbeddedBackend) -> set[str]:
    """The data ids the backend's store holds now."""
    store = backend.data.blobs
    if isinstance(store, LocalFiles):
        return {p.name for p in store.data_dir.rglob("*") if p.is_file()}
    assert isinstance(store, RadosBlobs)
    found = {entry.key.split(".", 1)[0] for entry in store.ioctx.list_objects()}
    return {name for name in found if is_data_id(name)}


def process_data_names(settings: dict[str, str], objects_dir: Path) -> set[str]:
    """The names under which a Walrus process started with `settings` (its walrus_storage) keeps data, read from
    outside it: file names for local files, RADOS object names (`<data id>.<n>`) for rados."""
    if settings.get("KOALA_WALRUS_STORAGE", "local") == "local":
        return {p.name for p in (objects_dir / "data").rglob("*") if p.is_file()}
    import rados

    cluster = rados.Rados(
        conffile=settings["KOALA_CEPH_CONF"],
        rados_id=settings["KOALA_CEPH_USER"],
        conf={"keyring": settings["KOALA_CEPH_KEYRING"]},
    )
    cluster.connect(timeout=20)
    try:
        with cluster.open_ioctx(settings["KOALA_WALRUS_RADOS_POOL"]) as ioctx:
            ioctx.set_namespace(settings["KOALA_WALRUS_RADOS_NAMESPACE"])
            return {entry.key for entry in ioctx.list_objects()}
    finally:
        cluster.shutdown()


def process_data_ids(settings: dict[str, str], objects_dir: Path) -> set[str]:
    """The data ids such a process keeps."""
    found = {name.split(".", 1)[0] for name in process_data_names(settings, objects_dir)}
    return {name for name in found if is_data_id(name)}
