"""The Kubernetes job template of the GPU training pool renders to a Job that asks for the GPUs."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from conftest import ROOT

pytest.importorskip("prefect_kubernetes", reason="the Kubernetes worker is the k8s extra: pip install -e '.[k8s]'")


def test_the_gpu_template_renders_a_job_requesting_gpus(prefect_env: dict[str, str]) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((ROOT / "deploy" / "k8s-gpu-job-template.json").read_text())
    gpu = next(d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
               if d["name"] == "gpu")  # fmt: skip
    assert gpu["work_pool"]["name"] == "pallm-k8s-gpu" and gpu["entrypoint"] == "flows/train_pallm.py:train_pallm"
    render = KubernetesWorkerJobConfiguration.from_template_and_values
    config = asyncio.run(render(template, gpu["work_pool"]["job_variables"]))
    job = config.job_manifest
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == gpu["work_pool"]["job_variables"]["image"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 8
    assert container["resources"]["requests"]["memory"] == "400Gi"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}], "NCCL needs a real /dev/shm"
    assert pod["restartPolicy"] == "Never"
    defaults = asyncio.run(render(template, {"image": "x"}))
    assert int(defaults.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
               ["nvidia.com/gpu"]) == 1, "one GPU unless asked"  # fmt: skip
