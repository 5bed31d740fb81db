"""Strict validation of Kubernetes manifests against the API's own types (the OpenAPI models that the
Kubernetes client of prefect-kubernetes is generated from): unknown fields, wrong types, missing required fields.
The API server would drop an unknown field with a warning at best; here it is an error."""

from __future__ import annotations

import re
from typing import Any

SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}


def manifest_errors(data: Any, type_name: str = "V1Job", path: str = "") -> list[str]:
    """Every way `data` is not a valid `type_name` (a model name such as V1Job), as readable lines."""
    from kubernetes_asyncio.client import Configuration, models

    if type_name == "object":  # IntOrString, RawExtension: anything goes
        return []
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [e for i, x in enumerate(data) for e in manifest_errors(x, m[1], f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping, got {type(data).__name__}"]
        inner = m[1]
        if path.endswith(("limits", "requests")):  # a resource quantity: a string or a plain number
            inner = "float" if not all(isinstance(v, str) for v in data.values()) else inner
        return [e for k, v in data.items() for e in manifest_errors(v, inner, f"{path}.{k}")]
    if type_name in SCALARS:
        ok = isinstance(data, SCALARS[type_name]) and not (type_name != "bool" and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    model = getattr(models, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} mapping, got {type(data).__name__}"]
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = [f"{path}.{k}: not a field of {type_name}" for k in data if k not in fields]
    for key, value in data.items():
        if key in fields:
            errors += manifest_errors(value, model.openapi_types[fields[key]], f"{path}.{key}")
    # The generated setters refuse None for required fields when client-side validation is on.
    probe = model.__new__(model)
    probe.local_vars_configuration = Configuration()
    for attr, json_name in model.attribute_map.items():
        if json_name not in data:
            try:
                setattr(probe, attr, None)
            except ValueError:
                errors.append(f"{path}.{json_name}: required by {type_name}")
    return errors
