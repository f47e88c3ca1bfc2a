"""The pytest plugin refuses a test that starts a real component without the integration marker,
so `pytest -m "not integration"` is a fast suite that never starts a server or a daemon."""

pytest_plugins = ["pytester"]


def test_an_unmarked_test_using_a_real_component_stops_the_run(pytester):
    pytester.makepyfile(
        test_unmarked="""
        def test_uses_the_server(hypha_server):
            pass

        def test_pure():
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        ["*not marked `pytest.mark.integration`*", "*test_unmarked.py::test_uses_the_server"]
    )
    assert "test_pure" not in result.stderr.str()


def test_marked_tests_and_pure_tests_are_collected(pytester):
    pytester.makepyfile(
        test_marked="""
        import pytest

        pytestmark = pytest.mark.integration

        def test_uses_slurm(slurm):
            pass
        """,
        test_pure="""
        def test_pure():
            pass
        """,
    )
    result = pytester.runpytest("--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_marked.py::test_uses_slurm", "*test_pure.py::test_pure"])
    fast = pytester.runpytest("-m", "not integration", "-q", "-p", "no:cacheprovider")
    fast.assert_outcomes(passed=1, deselected=1)
