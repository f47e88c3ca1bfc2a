"""Backend decisions that need no cluster: address parsing and error messages."""

import sys

import pytest
import ray

from bioengine_cluster import ClusterSettings
from bioengine_cluster._backends import ExternalBackend, LocalHeadBackend
from bioengine_cluster._service import make_backend
from bioengine_common import ConfigurationError, ServiceUnavailable, connect_driver, create_logger


@pytest.mark.parametrize("address", ["", "nohost", "host:", "host:port", "ray://"])
def test_external_addresses_are_validated(address):
    with pytest.raises(ConfigurationError, match="head-address"):
        ExternalBackend(address).start()


def test_external_ray_client_address_has_no_gcs_access():
    assert ExternalBackend("ray://10.0.0.1:10001").gcs_address() is None
    assert ExternalBackend("10.0.0.1:6379").gcs_address() == "10.0.0.1:6379"


def test_slurm_head_defaults_to_no_task_resources(tmp_path):
    logger = create_logger("test-backends")
    slurm = make_backend(ClusterSettings(mode="slurm", workspace_dir=tmp_path), logger)
    assert isinstance(slurm, LocalHeadBackend)
    assert (slurm.head.options.num_cpus, slurm.head.options.num_gpus) == (0, 0)
    local = make_backend(
        ClusterSettings(workspace_dir=tmp_path, head_num_cpus=3, head_memory_in_gb=2), logger
    )
    assert local.head.options.num_cpus == 3 and local.head.options.memory_bytes == 2 * 1024**3
    assert local.head.options.num_gpus is None  # Ray detects GPUs


def test_version_mismatch_names_both_versions(monkeypatch):
    def mismatch(**kwargs):
        raise RuntimeError("Version mismatch: The cluster was started with: Ray: 2.59.0 Python: 3.11.7")

    monkeypatch.setattr(ray, "init", mismatch)
    with pytest.raises(ConfigurationError) as info:
        connect_driver("10.0.0.1:6379", timeout=5)
    message = str(info.value)
    assert "Ray 2.59.0" in message or "Ray: 2.59.0" in message
    assert f"Ray {ray.__version__} / Python {sys.version.split()[0]}" in message


def test_other_connection_errors_name_the_address(monkeypatch):
    def refused(**kwargs):
        raise ConnectionError("Failed to connect to GCS")

    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ServiceUnavailable, match=r"10\.0\.0\.1:6379: Failed to connect to GCS"):
        connect_driver("10.0.0.1:6379", timeout=5)


def test_a_connection_error_gives_the_reason_ray_put_in_its_cause(monkeypatch):
    def no_node(**kwargs):
        try:
            raise RuntimeError("No node info found matching attributes: '' when trying to resolve node")
        except RuntimeError as exc:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from exc

    monkeypatch.setattr(ray, "init", no_node)
    with pytest.raises(ServiceUnavailable) as info:
        connect_driver("10.0.0.1:6379", timeout=5)
    assert "Failed to connect to Ray cluster at 10.0.0.1:6379: No node info found matching" in str(info.value)
