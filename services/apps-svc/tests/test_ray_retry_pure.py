"""How often apps-svc asks for the Ray cluster: every second while it starts, backing off only
after a connection it had was lost (issue 17: a growing backoff delayed readiness by 17 s)."""

from bioengine_apps._service import RAY_RETRY_MAX_S, RAY_RETRY_STARTING_S, ray_retry_delay


def test_while_starting_every_try_is_one_to_two_seconds_apart():
    assert 1.0 <= RAY_RETRY_STARTING_S <= 2.0
    delays = [ray_retry_delay(failures, was_connected=False) for failures in range(1, 200)]
    assert set(delays) == {RAY_RETRY_STARTING_S}  # no growth, however long the cluster takes


def test_after_a_lost_connection_the_delay_grows_to_its_cap():
    delays = [ray_retry_delay(failures, was_connected=True) for failures in range(1, 10)]
    assert delays[0] == 2.0
    assert delays == sorted(delays) and delays[-1] == RAY_RETRY_MAX_S
    assert all(delay <= RAY_RETRY_MAX_S for delay in delays)
