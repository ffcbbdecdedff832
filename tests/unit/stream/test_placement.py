from __future__ import annotations

import ipaddress

import pytest

from pvsd.stream.placement import Affinity, Candidate, choose_server


def candidate(
    name: str, address: str, sessions: int = 0, power: float = 1.0, alive: bool = True, replica: bool = True
) -> Candidate:
    return Candidate(name, ipaddress.IPv4Address(address), power, sessions, alive, replica)


TARGET = ipaddress.IPv4Address("10.1.0.50")


def test_fewest_sessions_per_unit_of_power() -> None:
    farm = [candidate("pvs1", "10.1.0.11", sessions=10), candidate("pvs2", "10.1.0.12", sessions=15, power=2)]
    assert choose_server(farm, TARGET).server == "pvs2"  # 7.5 per unit against 10
    farm = [candidate("pvs1", "10.1.0.11", sessions=10), candidate("pvs2", "10.1.0.12", sessions=25, power=2)]
    assert choose_server(farm, TARGET).server == "pvs1"


def test_ties_go_to_the_name_so_the_choice_is_stable() -> None:
    farm = [candidate("pvs2", "10.1.0.12"), candidate("pvs1", "10.1.0.11")]
    assert choose_server(farm, TARGET).server == "pvs1"


def test_dead_servers_and_servers_without_a_verified_replica_are_never_chosen() -> None:
    farm = [
        candidate("pvs1", "10.1.0.11", sessions=50),
        candidate("pvs2", "10.1.0.12", alive=False),
        candidate("pvs3", "10.1.0.13", replica=False),
    ]
    assert choose_server(farm, TARGET).server == "pvs1"
    none = choose_server([candidate("pvs3", "10.1.0.13", replica=False)], TARGET)
    assert none.server is None and "verified replica" in none.reason
    assert choose_server([candidate("pvs2", "10.1.0.12", alive=False)], TARGET).reason == "no live server"
    assert choose_server([], TARGET).server is None


@pytest.mark.parametrize(
    ("affinity", "expected"),
    [(Affinity.NONE, "pvs9"), (Affinity.BEST_EFFORT, "pvs1"), (Affinity.FIXED, "pvs1")],
)
def test_subnet_affinity_with_a_server_on_the_subnet(affinity: Affinity, expected: str) -> None:
    farm = [candidate("pvs1", "10.1.0.11", sessions=40), candidate("pvs9", "10.9.0.11", sessions=1)]
    assert choose_server(farm, TARGET, affinity).server == expected


def test_subnet_affinity_without_a_server_on_the_subnet() -> None:
    farm = [candidate("pvs9", "10.9.0.11")]
    assert choose_server(farm, TARGET, Affinity.BEST_EFFORT).server == "pvs9"
    fixed = choose_server(farm, TARGET, Affinity.FIXED)
    assert fixed.server is None and "10.1.0.0/24" in fixed.reason
    assert choose_server(farm, None, Affinity.FIXED).server == "pvs9"  # no target address: nothing to match
