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
        test_slurm_marked="""
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
    result.stdout.fnmatch_lines(["*test_pure.py::test_pure", "*test_slurm_marked.py::test_uses_slurm"])
    fast = pytester.runpytest("-m", "not integration", "-q", "-p", "no:cacheprovider")
    fast.assert_outcomes(passed=1, deselected=1)


def test_a_slurm_test_outside_a_slurm_file_stops_the_run(pytester):
    pytester.makepyfile(
        test_elsewhere="""
        import pytest

        pytestmark = pytest.mark.integration

        def test_submits(slurm):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*not named test_slurm_*.py*", "*test_elsewhere.py::test_submits"])


def test_units_of_work_are_files_with_the_slurm_files_together():
    from bioengine_common.testing import xdist_unit

    assert xdist_unit("services/x/tests/test_slurm_real.py::test_a") == "slurm"
    assert xdist_unit("tests/integration/test_slurm_apps.py::test_b[1]") == "slurm"
    assert xdist_unit("tests/integration/test_stack.py::test_c") == "tests/integration/test_stack.py"
