"""The harness's own helpers (scripts/tms_split.py, used by conftest and every pass)."""
from tms_split import free_port


def test_free_port_does_not_hand_out_a_port_twice():
    """Two picks for one server were the same port once (a split role's metrics and HTTP
    addresses), and the role refused to start, failing a test that had nothing to do with
    it. The kernel picks a bound port at random: 1,000 picks without the check held 39
    repeats here."""
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
