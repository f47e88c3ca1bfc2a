"""`bioengine cluster status`: the figures a person reads (rounded; GPU columns only with GPUs)."""

from bioengine_worker.cli.status import format_cluster

GIB = 1024**3


def _cluster(total_gpu: float, used_cpu: float = 0.1 + 0.2) -> dict:
    node = {
        "node_ip": "10.0.0.1", "head": True, "used_cpu": used_cpu, "total_cpu": 4.0, "used_gpu": 0.0,
        "total_gpu": total_gpu, "used_memory": 1.5 * GIB, "total_memory": 6.123456 * GIB,
        "used_object_store_memory": 0, "total_object_store_memory": 2 * GIB,
        "accelerator_type": "A100" if total_gpu else "NA", "slurm_job_id": None,
    }  # fmt: skip
    totals = {k: v for k, v in node.items() if k.startswith(("used_", "total_"))}
    return {
        "mode": "single-machine", "ray_version": "2.60.0", "head_address": "10.0.0.1:6379", "ready": True,
        "nodes": {"n1": node}, "cluster": totals,
        "pending_demand": [{"count": 1, "resources": {"CPU": 0.1 + 0.2}, "source": "task_actor"}],
    }  # fmt: skip


def test_without_gpus_the_table_has_no_gpu_columns_and_says_so_once():
    text = format_cluster(_cluster(total_gpu=0))
    lines = text.splitlines()
    assert lines[0] == "Ray cluster (single-machine, Ray 2.60.0) at 10.0.0.1:6379: ready; no GPUs"
    assert lines[1].split() == ["NODE", "ROLE", "CPU", "MEMORY", "OBJECT", "STORE", "SLURM", "JOB"]
    assert text.count("GPU") == 1 and "ACCELERATOR" not in text
    head = next(line for line in lines if line.strip().startswith("10.0.0.1"))
    assert head.split() == ["10.0.0.1", "head", "0.3/4", "1.5/6.12", "GiB", "0.0/2.0", "GiB", "-"]
    assert "30000000000000004" not in text and "pending: 1 x {'CPU': 0.3} (task_actor)" in text


def test_with_gpus_the_gpu_and_accelerator_columns_are_shown():
    text = format_cluster(_cluster(total_gpu=2))
    lines = text.splitlines()
    assert lines[0].endswith(": ready")
    assert "GPU" in lines[1].split() and "ACCELERATOR" in lines[1].split()
    head = next(line for line in lines if line.strip().startswith("10.0.0.1"))
    assert "0/2" in head.split() and "A100" in head
