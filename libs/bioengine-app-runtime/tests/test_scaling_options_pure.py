"""deploy_app's scaling, proxy_memory_in_gb and debug as the builder hands them to Serve, pure."""

from bioengine_app_runtime import AppSpec
from bioengine_app_runtime._builder import deployment_version, proxy_options, scaling_options


def _spec(**fields) -> AppSpec:
    return AppSpec(
        application_id="app",
        artifact_id="ws/app",
        code_dir="/code",
        home_dir="/home",
        deployments=["entry:Entry", "helper:Helper"],
        server_url="http://h",
        workspace="ws",
        **fields,
    )


def test_scaling_becomes_serve_options_per_class():
    spec = _spec(
        scaling={"Entry": {"num_replicas": 3}, "Helper": {"autoscaling_config": {"max_replicas": 4}}}
    )
    assert scaling_options(spec, "Entry") == {"num_replicas": 3, "autoscaling_config": None}
    assert scaling_options(spec, "Helper") == {
        "num_replicas": "auto",
        "autoscaling_config": {"max_replicas": 4},
    }
    assert scaling_options(_spec(), "Entry") == {}


def test_scaling_proxy_memory_and_debug_never_restart_the_app_s_replicas():
    plain = _spec()
    changed = _spec(scaling={"Entry": {"num_replicas": 2}}, proxy_memory_in_gb=1.0, debug=True)
    assert deployment_version(plain, "Entry") == deployment_version(changed, "Entry")


def test_proxy_memory_and_debug_reach_the_proxy():
    assert proxy_options(_spec())["ray_actor_options"]["num_cpus"] == 0
    assert "memory" not in proxy_options(_spec())["ray_actor_options"]
    assert "logging_config" not in proxy_options(_spec())
    options = proxy_options(_spec(proxy_memory_in_gb=0.5, debug=True))
    assert options["ray_actor_options"]["memory"] == 512 * 1024**2
    assert options["logging_config"] == {"log_level": "DEBUG"}
