"""Koala's iptables chains: read the live ones from `iptables-save`, diff, and render one
`iptables-restore --noflush` payload that rewrites only the chains that differ.

Only chains named `KOALA-*` and the single `-j KOALA-...` jumps in the built-in chains are Koala's; every
other chain and rule is left exactly as it is. Declaring a user chain in a --noflush payload flushes it, so a
changed chain is replaced whole, in one transaction with everything else in the payload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.cluster_controller.network.desired import CHAIN_PREFIX, DesiredState

TABLES = ("filter", "nat")


@dataclass
class TableState:
    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> its "-A" lines, in order


def parse_save(text: str) -> dict[str, TableState]:
    """Tables, chains and rules of `iptables-save` output (counters and comments dropped)."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableState())
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            current.chains.setdefault(chain, []).append(line)
    return tables


def _is_koala_jump(line: str) -> str | None:
    """The Koala chain a built-in chain's rule jumps to, if the rule is one of Koala's hooks."""
    parts = line.split()
    if len(parts) == 4 and parts[2] == "-j" and parts[3].startswith(CHAIN_PREFIX):
        return parts[3]
    return None


BUILTIN = frozenset({"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"})


def plan(desired: DesiredState, current: dict[str, TableState]) -> str:
    """The restore payload that brings Koala's chains from `current` to `desired`; "" when they match."""
    sections = []
    for table in TABLES:
        live = current.get(table, TableState())
        want = {chain: rules for (t, chain), rules in desired.chains.items() if t == table}
        live_koala = {c: r for c, r in live.chains.items() if c.startswith(CHAIN_PREFIX)}
        changed = [c for c in want if live_koala.get(c) != want[c] or c not in live_koala]
        stale = sorted(c for c in live_koala if c not in want)
        hooks_want = {(builtin, chain) for t, builtin, chain in desired.hooks if t == table}
        deletes, inserts = [], []
        for builtin in sorted(BUILTIN):
            seen: set[str] = set()
            for line in live.chains.get(builtin, []):
                target = _is_koala_jump(line)
                if target is None:
                    continue
                if (builtin, target) not in hooks_want or target in seen:
                    deletes.append(f"-D {builtin} -j {target}")  # stale or duplicate hook
                seen.add(target)
            for b, chain in sorted(hooks_want):
                if b == builtin and chain not in seen:
                    inserts.append(f"-I {builtin} 1 -j {chain}")
        if not (changed or stale or deletes or inserts):
            continue
        lines = [f"*{table}"]
        lines += [f":{chain} - [0:0]" for chain in [*changed, *stale]]
        lines += deletes
        for chain in changed:
            lines += want[chain]
        lines += inserts
        lines += [f"-X {chain}" for chain in stale]
        lines.append("COMMIT")
        sections.append("\n".join(lines))
    return "\n".join(sections) + "\n" if sections else ""


def applied_view(desired: DesiredState) -> dict[str, TableState]:
    """What `parse_save` would return for Koala's part once `desired` is applied (foreign rules left out: the
    planner never looks at them)."""
    tables = {table: TableState() for table in TABLES}
    for table, builtin, chain in desired.hooks:
        tables[table].chains.setdefault(builtin, []).append(f"-A {builtin} -j {chain}")
    for (table, chain), rules in desired.chains.items():
        tables[table].chains[chain] = list(rules)
    return tables


def render_full(desired: DesiredState) -> str:
    """Every Koala chain of `desired` as a restore payload (for reading and for benchmarks' baselines)."""
    return plan(desired, {})
