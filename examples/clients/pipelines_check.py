"""Checks pipelines that `kiln pipeline export` wrote against the engines' own models, offline:
Argo Workflows' WorkflowTemplate and CronWorkflow through hera's models (generated from Argo's
OpenAPI schema), Kubeflow Pipelines' v2 pipeline spec and Kubernetes platform spec through
kfp's protobuf messages and its component loader. Every key must be one the model knows: a
misspelt field fails here instead of being dropped by the engine.

    python pipelines_check.py argo FILE...
    python pipelines_check.py kfp FILE...
"""

import json
import sys

import yaml


def known_keys(doc, model, path):
    """Fails when `doc` holds a key `model` (a pydantic model from hera) does not know."""
    import typing

    import pydantic

    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        if not isinstance(doc, dict):
            return
        aliases = {}
        for name, field in model.model_fields.items():
            aliases[field.alias or name] = field.annotation
        for key, value in doc.items():
            if key not in aliases:
                raise SystemExit(f"{path}: unknown field {key!r} for {model.__name__}")
            known_keys(value, aliases[key], f"{path}.{key}")
        return
    origin = typing.get_origin(model)
    args = typing.get_args(model)
    if origin in (list, typing.List) and isinstance(doc, list):
        for i, item in enumerate(doc):
            known_keys(item, args[0], f"{path}[{i}]")
    elif origin in (dict, typing.Dict) and isinstance(doc, dict):
        for k, v in doc.items():
            known_keys(v, args[1], f"{path}.{k}")
    elif args:
        # Optional / Union: it must fit one member that is not None.
        error = None
        for a in args:
            if a is type(None):
                continue
            try:
                known_keys(doc, a, path)
                return
            except SystemExit as e:
                error = e
        if error is not None:
            raise error


def check_argo(files):
    from hera.workflows.models import CronWorkflow, WorkflowTemplate

    kinds = {"WorkflowTemplate": WorkflowTemplate, "CronWorkflow": CronWorkflow}
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        seen = []
        for doc in docs:
            model = kinds[doc["kind"]]
            model.model_validate(doc)
            known_keys(doc, model, f"{path}:{doc['kind']}")
            seen.append(doc["kind"])
        template = next(d for d in docs if d["kind"] == "WorkflowTemplate")
        spec = template["spec"]
        names = {t["name"] for t in spec["templates"]}
        dag = next(t for t in spec["templates"] if t["name"] == spec["entrypoint"])["dag"]
        tasks = {t["name"]: t for t in dag["tasks"]}
        for task in dag["tasks"]:
            assert task["template"] in names, task
            for dep in task.get("dependencies", []):
                assert dep in tasks, (task["name"], dep)
            for art in task.get("arguments", {}).get("artifacts", []):
                producer = art["from"].split(".")[1]
                assert producer in task.get("dependencies", []), (task["name"], producer)
        params = {p["name"] for p in spec.get("arguments", {}).get("parameters", [])}
        for t in spec["templates"]:
            for arg in t.get("container", {}).get("args", []):
                if "{{workflow.parameters." in arg:
                    name = arg.split("{{workflow.parameters.")[1].split("}}")[0]
                    assert name in params, (t["name"], name)
        print(f"{path}: {', '.join(seen)} valid ({len(tasks)} tasks)")


def check_kfp(files):
    from google.protobuf import json_format
    from kfp import components
    from kfp.pipeline_spec import pipeline_spec_pb2
    from kfp.kubernetes import kubernetes_executor_config_pb2

    for path in files:
        with open(path) as f:
            text = f.read()
        docs = [d for d in yaml.safe_load_all(text) if d]
        spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        if len(docs) > 1:
            platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
            executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
            for name, config in executors.items():
                assert name in docs[0]["deploymentSpec"]["executors"], name
                json_format.ParseDict(
                    config, kubernetes_executor_config_pb2.KubernetesExecutorConfig()
                )
            assert platform.platforms["kubernetes"]
        loaded = components.load_component_from_text(text)
        tasks = spec.root.dag.tasks
        for name, task in tasks.items():
            assert task.component_ref.name in spec.components, name
            for dep in task.dependent_tasks:
                assert dep in tasks, (name, dep)
        print(f"{path}: pipeline spec {loaded.name!r} valid ({len(tasks)} tasks)")


if __name__ == "__main__":
    engine, files = sys.argv[1], sys.argv[2:]
    {"argo": check_argo, "kfp": check_kfp}[engine](files)
