"""Consolidation's plan (services/cluster_controller/consolidation.py): which host to empty and where its instances go.
The loop that acts on it runs against real guests in tests/migration/test_live_migration.py."""

from __future__ import annotations

from services.cluster_controller.consolidation import Guest, Host, plan


def guest(name: str, memory: int = 256, movable: bool = True) -> Guest:
    return Guest(name, memory, 1, 5, movable)


def host(key: str, free: int, *guests: Guest, usable: bool = True, memory: int = 4096) -> Host:
    return Host(key, memory, free, 16, 100, tuple(guests), usable)


def test_the_least_loaded_host_is_emptied_onto_the_busiest() -> None:
    hosts = [
        host("a", 3000, guest("i-1")),
        host("b", 1000, guest("i-2"), guest("i-3")),
        host("c", 2000, guest("i-4")),
    ]
    assert plan(hosts, 0.1) == [("i-1", "b")]  # a (one guest) goes to b, the fullest that has room


def test_nothing_moves_when_a_guest_would_not_fit() -> None:
    hosts = [host("a", 600, guest("i-1", 2048)), host("b", 1000, guest("i-2", 1024))]
    assert plan(hosts, 0.1) == []
    # ... nor when the target's memory reserve would be eaten into.
    tight = [host("a", 600, guest("i-1", 600)), host("b", 1000, guest("i-2", 3000))]
    assert plan(tight, 0.1) == []
    assert plan(tight, 0.0) == [("i-1", "b")]


def test_hosts_that_cannot_take_part() -> None:
    # An unmovable guest (suspended, migrating, moved lately) keeps its host; the next candidate is tried.
    hosts = [host("a", 3000, guest("i-1", movable=False)), host("b", 2000, guest("i-2"), guest("i-3")),
             host("c", 1000, guest("i-4"), guest("i-5"), guest("i-6"))]  # fmt: skip
    assert plan(hosts, 0.1) == [("i-2", "c"), ("i-3", "c")]
    # Unusable hosts (down, evacuated, short of memory, a migration settling) are neither source nor target.
    assert plan([host("a", 3000, guest("i-1")), host("b", 1000, guest("i-2"), usable=False)], 0.1) == []
    # An empty host is no target (it is the one that should sleep) and a single host has nowhere to go.
    assert plan([host("a", 3000, guest("i-1")), host("b", 4000)], 0.1) == []
    assert plan([host("a", 3000, guest("i-1"))], 0.1) == []


def test_largest_guests_first_and_all_or_nothing() -> None:
    hosts = [
        host("a", 2000, guest("i-small", 128), guest("i-big", 1024)),
        host("b", 1700, guest("i-2"), guest("i-3"), guest("i-4")),
        host("c", 1200, guest("i-5"), guest("i-6"), guest("i-7")),
    ]
    moves = plan(hosts, 0.1)
    assert moves[0] == ("i-big", "b")  # c (busiest) lacks room for it after the reserve: b takes it
    assert moves[1] == ("i-small", "c")
