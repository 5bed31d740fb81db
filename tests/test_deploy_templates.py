"""The Kubernetes job template, with each Kubernetes deployment's variables from prefect.yaml, renders to a Job
manifest the Kubernetes API accepts: GPUs, node selector and tolerations where the deployment asks for them."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import yaml
from conftest import ROOT
from k8s_helpers import manifest_errors

pytest.importorskip("prefect_kubernetes", reason="the Kubernetes worker is the k8s extra: pip install -e '.[k8s]'")

TEMPLATE = ROOT / "deploy" / "k8s-job-template.json"
K8S_POOLS = {"pallm-k8s-cpu", "pallm-k8s-gpu"}


def deployments() -> dict[str, dict[str, Any]]:
    found = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return {f"{d['entrypoint'].rsplit(':', 1)[1].replace('_', '-')}/{d['name']}": d for d in found}


def job_for_run(variables: dict[str, Any]) -> dict[str, Any]:
    """The manifest a Kubernetes worker submits for a flow run: the variables checked against the template's
    schema (as the Prefect server does when a deployment or run sets them), the template rendered with them,
    then completed by the worker (command, environment, labels, name)."""
    import jsonschema
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    jsonschema.validate(variables, template["variables"])
    render = KubernetesWorkerJobConfiguration.from_template_and_values
    config = asyncio.run(render(template, variables))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="calm-otter"))
    return config.job_manifest


def pod_and_container(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = job["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_every_kubernetes_deployment_renders_a_valid_job(prefect_env: dict[str, str]) -> None:
    k8s = {n: d for n, d in deployments().items() if d["work_pool"]["name"] in K8S_POOLS}
    assert {"build-dataset/k8s", "train-pallm/gpu"} <= set(k8s)
    for name, d in k8s.items():
        job = job_for_run(d["work_pool"]["job_variables"])
        assert manifest_errors(job) == [], name
        assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
        pod, container = pod_and_container(job)
        assert pod["restartPolicy"] == "Never" and container["image"] == d["work_pool"]["job_variables"]["image"]
        assert container["args"][:3] == ["prefect", "flow-run", "execute"], "the worker's command reaches the pod"


def test_the_gpu_deployment_asks_for_gpus_on_gpu_nodes(prefect_env: dict[str, str]) -> None:
    gpu = deployments()["train-pallm/gpu"]
    assert gpu["work_pool"]["name"] == "pallm-k8s-gpu" and gpu["entrypoint"] == "flows/train_pallm.py:train_pallm"
    variables = gpu["work_pool"]["job_variables"]
    pod, container = pod_and_container(job_for_run(variables))
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == variables["gpus"] == 8
    assert container["resources"]["requests"]["memory"] == "400Gi"
    assert pod["nodeSelector"] == variables["node_selector"] and pod["nodeSelector"]
    assert pod["tolerations"] == variables["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}], "NCCL needs a real /dev/shm"


def test_cpu_jobs_ask_for_no_gpu_and_leave_unset_variables_out(prefect_env: dict[str, str]) -> None:
    build = deployments()["build-dataset/k8s"]
    assert build["work_pool"]["name"] == "pallm-k8s-cpu"
    pod, container = pod_and_container(job_for_run(build["work_pool"]["job_variables"]))
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    bare = job_for_run({"image": "pallm:latest"})
    assert manifest_errors(bare) == []
    pod, container = pod_and_container(bare)
    assert "nodeSelector" not in pod and "tolerations" not in pod and not container["resources"].get("limits")


@pytest.mark.parametrize(
    "variables",
    [
        {"gpus": 0},  # zero GPUs is "none": leave the variable out
        {"node_selector": {"pool": 1}},  # label values are strings
        {"tolerations": {"key": "x"}},  # a list of tolerations, not one
    ],
)
def test_bad_variables_are_refused_before_any_job(prefect_env: dict[str, str], variables: dict) -> None:
    import jsonschema

    with pytest.raises(jsonschema.ValidationError) as refused:
        job_for_run({"image": "pallm:latest", **variables})
    assert next(iter(refused.value.absolute_path)) == next(iter(variables))


def test_the_validator_catches_what_the_api_would_drop(prefect_env: dict[str, str]) -> None:
    """The check above can fail: fields in the wrong place, wrong types and missing names are all caught."""
    job = job_for_run({"image": "pallm:latest", "gpus": 1})
    job["spec"]["template"]["spec"]["completions"] = 1  # a Job field, misplaced in the pod
    job["spec"]["template"]["spec"]["containers"][0].pop("name")
    job["spec"]["backoffLimit"] = "0"
    assert sorted(manifest_errors(job)) == [
        ".spec.backoffLimit: expected int, got '0'",
        ".spec.template.spec.completions: not a field of V1PodSpec",
        ".spec.template.spec.containers[0].name: required by V1Container",
    ]
