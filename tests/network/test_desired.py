"""Pure parts of cluster networking: settings validation, address arithmetic, the desired state as data."""

from __future__ import annotations

import ipaddress

import pytest

from common.config import ConfigError, parse_conf
from common.messages.network import AssignAddressRequest, NetworkRule
from services.cluster_controller.network import iptables
from services.cluster_controller.network.addressing import mac_for_instance, max_vlan, subnet_for_vlan
from services.cluster_controller.network.desired import InstanceEntry, NetworkSpec, compute
from services.cluster_controller.network.settings import VnetError, VnetSettings, parse_macmap, parse_public_ips

MANAGED = dict(
    VNET_MODE="MANAGED-NOVLAN",
    VNET_SUBNET="192.168.0.0",
    VNET_NETMASK="255.255.0.0",
    VNET_ADDRSPERNET=32,
    VNET_PUBINTERFACE="pub0",
    VNET_PRIVINTERFACE="priv0",
    VNET_PUBLICIPS="10.99.0.50-10.99.0.59 10.99.1.0/30",
    VNET_CLOUDIP="10.98.0.2",
    VNET_DNS="10.98.0.53",
)


def test_subnet_arithmetic_matches_the_reference() -> None:
    whole = ipaddress.IPv4Network("192.168.0.0/16")
    subnet = subnet_for_vlan(whole, 32, 10)  # the reference's example: vlan 10 -> 192.168.1.0/27
    assert str(subnet.network) == "192.168.1.0/27"
    assert str(subnet.router) == "192.168.1.1"
    assert str(subnet.broadcast) == "192.168.1.31"
    assert str(subnet.host(2)) == "192.168.1.2" and str(subnet.host(30)) == "192.168.1.30"
    with pytest.raises(VnetError):
        subnet.host(31)  # the broadcast address is not a host
    with pytest.raises(VnetError):
        subnet.host(1)  # the router
    assert max_vlan(whole, 32) == 2049
    with pytest.raises(VnetError):
        subnet_for_vlan(whole, 32, 2050)
    with pytest.raises(VnetError):
        subnet_for_vlan(whole, 32, 1)


def test_mac_scheme() -> None:
    assert mac_for_instance("i-4F1C02AB") == "d0:0d:4f:1c:02:ab"
    with pytest.raises(VnetError):
        mac_for_instance("i-../etc")


def test_public_ips_and_macmap_parsing() -> None:
    ips = [str(ip) for ip in parse_public_ips("10.0.0.1 10.0.0.5-7, 10.0.1.0/30 10.0.0.9-10")]
    assert ips == ["10.0.0.1", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.1.1", "10.0.1.2", "10.0.0.9", "10.0.0.10"]
    for bad in ("10.0.0.9-3", "nonsense", "10.0.0.0/8"):
        with pytest.raises(VnetError):
            parse_public_ips(bad, limit=1000)
    assert parse_macmap("D0:0D:00:00:00:01=10.1.0.2") == [("d0:0d:00:00:00:01", ipaddress.IPv4Address("10.1.0.2"))]
    with pytest.raises(VnetError):
        parse_macmap("d0:0d:00:00:00:01=10.1.0.2 d0:0d:00:00:00:01=10.1.0.3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"VNET_MODE": "BRIDGED"}, "VNET_MODE"),
        ({"VNET_NETMASK": "255.0.255.0"}, "not a network"),
        ({"VNET_SUBNET": "192.168.0.1"}, "host bits"),
        ({"VNET_ADDRSPERNET": 24}, "power of two"),
        ({"VNET_PRIVINTERFACE": ""}, "VNET_PRIVINTERFACE"),
        ({"VNET_PRIVINTERFACE": "eth0; rm -rf /"}, "interface name"),
        ({"VNET_CLOUDIP": ""}, "VNET_CLOUDIP"),
        ({"VNET_PUBLICIPS": "192.168.3.4"}, "inside VNET_SUBNET"),
        ({"VNET_DNS": "8.8.8"}, "VNET_DNS"),
    ],
)
def test_bad_settings_are_refused_at_start(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VnetSettings(**{**MANAGED, **change})


def test_static_needs_a_macmap_inside_the_subnet() -> None:
    base = dict(VNET_MODE="STATIC", VNET_SUBNET="10.1.0.0", VNET_NETMASK="255.255.255.0", VNET_PRIVINTERFACE="p0")
    with pytest.raises(ValueError, match="VNET_MACMAP"):
        VnetSettings(**base)
    with pytest.raises(ValueError, match="outside"):
        VnetSettings(**base, VNET_MACMAP="d0:0d:00:00:00:01=10.2.0.2")
    settings = VnetSettings(**base, VNET_MACMAP="d0:0d:00:00:00:01=10.1.0.2", VNET_ROUTER="10.1.0.254")
    state = compute(settings, [], [], {})
    assert state.dhcp is not None and state.dhcp.subnets[0].router == "10.1.0.254"
    assert [(h.mac, h.ip) for h in state.dhcp.hosts] == [("d0:0d:00:00:00:01", "10.1.0.2")]
    assert not state.chains and not state.hooks


def test_cc_config_carries_the_vnet_keys(tmp_path) -> None:
    from services.cluster_controller.config import ClusterControllerConfig

    text = "\n".join(f'{k}="{v}"' for k, v in MANAGED.items())
    base = f'KOALA_SERVICE_ID="cc-z"\nKOALA_STATE_DIR="{tmp_path}"\nKOALA_PKI_DIR="{tmp_path}"\n'
    base += 'KOALA_ZONE="z"\nKOALA_CLC_URL="http://127.0.0.1:8773"\n'
    config = ClusterControllerConfig.from_settings(parse_conf(base + text, "cc.conf"), environ={})
    assert config.VNET_MODE == "MANAGED-NOVLAN" and config.metadata_port() == 8773
    with pytest.raises(ConfigError, match=r"cc\.conf:\d+: VNET_ADDRSPERNET"):
        ClusterControllerConfig.from_settings(parse_conf(base + text + '\nVNET_ADDRSPERNET="7"', "cc.conf"), {})


def _state(settings: VnetSettings, rules: tuple[NetworkRule, ...] = ()):
    networks = [NetworkSpec("111-default", 10, rules), NetworkSpec("111-web", 11)]
    instances = [
        InstanceEntry("i-00000001", "d0:0d:00:00:00:01", "192.168.1.2", 10),
        InstanceEntry("i-00000002", "d0:0d:00:00:00:02", "192.168.1.34", 11),
        InstanceEntry("i-00000003", "d0:0d:00:00:00:03", "192.168.9.9", 300),  # its network is not started
    ]
    return compute(settings, networks, instances, {"10.99.0.50": "192.168.1.2"})


def test_managed_state_as_data() -> None:
    rules = (
        NetworkRule(protocol="tcp", from_port=22, to_port=22, cidrs=["0.0.0.0/0"]),
        NetworkRule(protocol="tcp", from_port=8000, to_port=8080, cidrs=["10.99.0.0/24"], source_networks=["111-web"]),
        NetworkRule(protocol="icmp", from_port=8, to_port=-1, cidrs=["10.0.0.0/8"]),
        NetworkRule(protocol="udp", from_port=-1, to_port=-1, source_networks=["111-unknown"]),
    )
    state = _state(VnetSettings(**MANAGED), rules)
    assert state.addresses["priv0"] == ["169.254.169.254/32", "192.168.1.1/27", "192.168.1.33/27"]
    assert state.addresses["pub0"] == ["10.99.0.50/32"]
    assert not state.links  # no VLAN devices in MANAGED-NOVLAN
    assert state.chains[("filter", "KOALA-G10")] == [
        "-A KOALA-G10 -s 192.168.1.0/27 -d 192.168.1.0/27 -j ACCEPT",
        "-A KOALA-G10 -d 192.168.1.0/27 -p tcp -m tcp --dport 22 -j ACCEPT",
        "-A KOALA-G10 -s 10.99.0.0/24 -d 192.168.1.0/27 -p tcp -m tcp --dport 8000:8080 -j ACCEPT",
        "-A KOALA-G10 -s 192.168.1.32/27 -d 192.168.1.0/27 -p tcp -m tcp --dport 8000:8080 -j ACCEPT",
        "-A KOALA-G10 -s 10.0.0.0/8 -d 192.168.1.0/27 -p icmp -m icmp --icmp-type 8 -j ACCEPT",
    ]
    forward = state.chains[("filter", "KOALA-FORWARD")]
    assert forward[0].endswith("RELATED,ESTABLISHED -j ACCEPT")
    assert forward[-2:] == [
        "-A KOALA-FORWARD -d 192.168.0.0/16 -j DROP",
        "-A KOALA-FORWARD -s 192.168.0.0/16 -j ACCEPT",
    ]
    nat = state.chains[("nat", "KOALA-PREROUTING")]
    assert "--dport 80 -j DNAT --to-destination 10.98.0.2:8773" in nat[0]
    assert "-A KOALA-PREROUTING -d 10.99.0.50/32 -j DNAT --to-destination 192.168.1.2" in nat
    post = state.chains[("nat", "KOALA-POSTROUTING")]
    assert post.index("-A KOALA-POSTROUTING -s 192.168.1.2/32 ! -d 192.168.0.0/16 -j SNAT --to-source 10.99.0.50") < (
        post.index("-A KOALA-POSTROUTING -s 192.168.0.0/16 ! -d 192.168.0.0/16 -j MASQUERADE")
    )
    assert state.dhcp is not None
    assert [(h.mac, h.ip, h.name) for h in state.dhcp.hosts] == [
        ("d0:0d:00:00:00:01", "192.168.1.2", "i-00000001"),
        ("d0:0d:00:00:00:02", "192.168.1.34", "i-00000002"),
    ]
    assert state.dhcp.dns == ["10.98.0.53"]
    # Pure: the same inputs give the same output.
    assert _state(VnetSettings(**MANAGED), rules) == state


def test_managed_vlan_devices_and_names() -> None:
    state = _state(VnetSettings(**{**MANAGED, "VNET_MODE": "MANAGED"}))
    assert [(link.name, link.kind, link.parent, link.vlan_id, link.master) for link in state.links] == [
        ("koalabr10", "bridge", "", 0, ""),
        ("priv0.10", "vlan", "priv0", 10, "koalabr10"),
        ("koalabr11", "bridge", "", 0, ""),
        ("priv0.11", "vlan", "priv0", 11, "koalabr11"),
    ]
    assert state.addresses["koalabr10"] == ["192.168.1.1/27"]
    assert state.dhcp is not None and state.dhcp.interfaces == ["priv0", "koalabr10", "koalabr11"]


def test_plan_against_live_rules_only_touches_what_differs() -> None:
    state = _state(VnetSettings(**MANAGED))
    full = iptables.render_full(state)
    live = iptables.parse_save(
        "*filter\n:FORWARD DROP [0:0]\n:OTHER - [0:0]\n-A FORWARD -s 1.2.3.4/32 -j DROP\n-A OTHER -j ACCEPT\nCOMMIT\n"
    )
    assert iptables.plan(state, live) == full  # nothing of Koala's yet: everything, and no foreign chain named
    assert "OTHER" not in full and "1.2.3.4" not in full
    applied = iptables.parse_save(_as_saved(state))
    assert iptables.plan(state, applied) == ""  # applied: nothing to do
    changed = _state(
        VnetSettings(**MANAGED), (NetworkRule(protocol="tcp", from_port=22, to_port=22, cidrs=["1.0.0.0/8"]),)
    )
    delta = iptables.plan(changed, applied)
    assert delta.splitlines() == [
        "*filter",
        ":KOALA-G10 - [0:0]",
        *changed.chains[("filter", "KOALA-G10")],
        "COMMIT",
    ]
    gone = compute(VnetSettings(**MANAGED), [NetworkSpec("111-web", 11)], [], {})
    delta = iptables.plan(gone, applied)
    assert "-X KOALA-G10" in delta and ":KOALA-G10 - [0:0]" in delta


def _as_saved(state) -> str:
    """What iptables-save prints after `state` was applied (hooks at the top of the built-in chains)."""
    out = []
    for table in ("filter", "nat"):
        out.append(f"*{table}")
        for t, builtin, chain in state.hooks:
            if t == table:
                out.append(f"-A {builtin} -j {chain}")
        for (t, chain), rules in state.chains.items():
            if t == table:
                out.append(f":{chain} - [0:0]")
                out += rules
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def test_message_validation() -> None:
    with pytest.raises(ValueError):
        NetworkRule(protocol="tcp", from_port=80, to_port=22, cidrs=["0.0.0.0/0"])
    with pytest.raises(ValueError):
        NetworkRule(protocol="tcp", from_port=22, to_port=22)  # no source at all
    with pytest.raises(ValueError):
        NetworkRule(protocol="tcp", from_port=22, to_port=22, cidrs=["300.0.0.0/8"])
    with pytest.raises(ValueError):
        AssignAddressRequest(public_ip="10.0.0.1")
    assert AssignAddressRequest(public_ip="10.0.0.1", instance_id="i-ABCDEF01").instance_id == "i-abcdef01"
