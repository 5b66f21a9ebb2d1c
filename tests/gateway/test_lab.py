from authz.gateway.lab import _ephemeral_ports, free_port


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """An outgoing connection's local port comes from the ephemeral range; a
    port picked there could be taken before the lab's server binds it."""
    low, _ = _ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert all(port < low for port in ports)
    assert len(ports) > 40  # random, not one port over and over
