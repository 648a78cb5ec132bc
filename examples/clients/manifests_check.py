"""Validates the manifests `kiln deploy NAME --export kserve|kubernetes` writes, offline: the
Kubernetes kinds against the official schemas (kubernetes-validate, strict: no unknown fields),
KServe's against KServe's own Python models (`V1beta1InferenceService`,
`V1alpha1ClusterServingRuntime` and the Kubernetes models they nest): every field must be one
the model declares, recursively, and every value of the declared kind.

    python3 -m venv /var/tmp/kiln-k8s
    /var/tmp/kiln-k8s/bin/pip install kubernetes-validate==1.37.0 kserve==0.21.0
    /var/tmp/kiln-k8s/bin/python examples/clients/manifests_check.py DIR [DIR …]
"""
import json
import pathlib
import re
import sys

import kserve.models
import kubernetes.client
import kubernetes_validate

KUBERNETES = "1.34.0"
KSERVE = {
    "InferenceService": "V1beta1InferenceService",
    "ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def model_class(name):
    return getattr(kserve.models, name, None) or getattr(kubernetes.client, name, None)


def check(value, kind, where):
    """Fails unless `value` fits the generated model type `kind` (as its openapi_types say)."""
    inner = re.fullmatch(r"(?:list\[|List\[)(.*)\]", kind)
    if inner:
        assert isinstance(value, list), (where, value)
        for i, item in enumerate(value):
            check(item, inner.group(1), f"{where}[{i}]")
        return
    inner = re.fullmatch(r"(?:dict\(str, |Dict\[str, )(.*)[\)\]]", kind)
    if inner:
        assert isinstance(value, dict), (where, value)
        for k, item in value.items():
            check(item, inner.group(1), f"{where}.{k}")
        return
    if kind in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[kind]), (where, kind, value)
        return
    cls = model_class(kind)
    assert cls is not None, (where, f"unknown type {kind}")
    if kind == "IntOrString":
        return
    assert isinstance(value, dict), (where, kind, value)
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    for key, item in value.items():
        assert key in by_json, f"{where}: {kind} has no field `{key}`"
        check(item, cls.openapi_types[by_json[key]], f"{where}.{key}")


checked = 0
for directory in sys.argv[1:]:
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        document = json.loads(path.read_text())
        kind = document["kind"]
        if kind in KSERVE:
            check(document, KSERVE[kind], path.name)
        else:
            kubernetes_validate.validate(document, KUBERNETES, strict=True)
        checked += 1
        print(f"{path}: a valid {kind}")
assert checked, "no manifests found"
