"""What the gateway adds for the dashboard page: the SLURM job script for admins only."""

from bioengine_gateway._service import ray_cluster_for


def test_the_job_script_is_for_admins_only():
    ray_cluster = {"mode": "slurm", "slurm": {"jobs": [{"job_id": "7"}], "job_script": "#!/bin/bash\n"}}
    assert ray_cluster_for(ray_cluster, admin=True) is ray_cluster
    seen = ray_cluster_for(ray_cluster, admin=False)
    assert seen == {"mode": "slurm", "slurm": {"jobs": [{"job_id": "7"}]}}
    assert ray_cluster["slurm"]["job_script"] == "#!/bin/bash\n"  # the cached status is untouched


def test_other_modes_and_no_status_pass_unchanged():
    single = {"mode": "single-machine", "nodes": {}}
    assert ray_cluster_for(single, admin=False) is single
    assert ray_cluster_for(None, admin=False) is None
