"""choose_ports lets go of a worker port block as soon as one of its ports is taken: with other
Ray heads on the machine (tests on two workers, two BioEngine workers on one host), trying
blocks must not hold a thousand sockets each until the open-file limit runs out."""

import random
import resource
import socket

from bioengine_common.local_stack import choose_ports
from bioengine_common.local_stack._ray_head import WORKER_PORT_COUNT


def _taken_port_in(base: int) -> socket.socket:
    for port in range(base + WORKER_PORT_COUNT // 2, base + WORKER_PORT_COUNT):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("0.0.0.0", port))
            return sock
        except OSError:
            sock.close()
    raise AssertionError(f"no free port to take in the block at {base}")


def test_blocks_with_a_taken_port_are_let_go_within_a_low_open_file_limit():
    seed = 7
    draws = random.Random(seed)
    bases = [draws.randrange(20000, 60000 - WORKER_PORT_COUNT) for _ in range(4)]
    blockers = [_taken_port_in(base) for base in bases[:3]]  # the first three blocks are taken
    taken = {sock.getsockname()[1] for sock in blockers}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for one block and the process's own files, not for the three blocks tried before it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (WORKER_PORT_COUNT + 400, hard))
    try:
        ports = choose_ports(random.Random(seed))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for sock in blockers:
            sock.close()
    assert not taken & set(range(ports.min_worker, ports.max_worker + 1))
    assert ports.max_worker - ports.min_worker + 1 == WORKER_PORT_COUNT
