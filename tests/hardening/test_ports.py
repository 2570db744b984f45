"""`koala up` takes its configured ports, or fails saying which one is taken: never a random port instead."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cli import allinone
from cli.allinone import AllInOne, PortInUse
from tests.harness import free_port


def _leave_in_time_wait(port: int) -> None:
    """A closed connection whose server side closed first: the port stays in TIME_WAIT for a minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        server_side, _ = listener.accept()
        server_side.close()  # the active closer keeps TIME_WAIT
        client.recv(1)
        client.close()


def test_ports_in_time_wait_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = {role: free_port() for role in allinone.ROLES}
    for port in wanted.values():
        _leave_in_time_wait(port)
    monkeypatch.setattr(allinone, "DEFAULT_PORTS", wanted)
    cloud = AllInOne(tmp_path)
    cloud.prepare()
    assert {role: e.port for role, e in cloud.endpoints().items()} == wanted


def test_a_port_another_program_listens_on_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = {role: free_port() for role in allinone.ROLES}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", wanted["cc"]))
        squatter.listen()
        monkeypatch.setattr(allinone, "DEFAULT_PORTS", wanted)
        cloud = AllInOne(tmp_path)
        with pytest.raises(PortInUse, match=f"port {wanted['cc']} on 127.0.0.1 is in use"):
            cloud.prepare()
    assert not cloud.endpoints_path.exists()
