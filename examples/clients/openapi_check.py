"""Checks kiln's `/api/openapi.json` with the standard validator (openapi-spec-validator), then
asks every GET of kiln's API that needs no path parameter, and the model, run and pipeline-run
pages named in those answers, and validates each answer against the schema the document gives
for it (jsonschema, draft 2020-12). Exits non-zero on any disagreement.

    python3 examples/clients/openapi_check.py http://127.0.0.1:8080 TOKEN
"""
import json
import sys
import urllib.request

import jsonschema
from openapi_spec_validator import validate

url, token = sys.argv[1:3]


def fetch(path):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)


doc = fetch("/api/openapi.json")
validate(doc)


def check(template, path):
    schema = doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    rooted = {"allOf": [schema], "components": doc["components"]}
    jsonschema.Draft202012Validator(rooted).validate(fetch(path))
    return path


checked = []
for template, item in doc["paths"].items():
    if "{" not in template and "get" in item and template != "/api/pipelines" and template != "/api/pipeline-runs":
        checked.append(check(template, template))
for model in fetch("/api/models")["models"]:
    name = model["name"]
    checked.append(check("/api/models/{name}", f"/api/models/{name}"))
    checked.append(check("/api/models/{name}/history", f"/api/models/{name}/history"))
    checked.append(check("/api/models/{name}/deployment", f"/api/models/{name}/deployment"))
    checked.append(check("/api/models/{name}/drift", f"/api/models/{name}/drift"))
    if model["latest_version"]:
        checked.append(check("/api/models/{name}/versions/{which}", f"/api/models/{name}/versions/{model['latest_version']}"))
for entry in fetch("/api/runs")["runs"]:
    checked.append(check("/api/runs/{id}", f"/api/runs/{entry['run']['id']}"))
assert len(checked) >= 10, checked
print(f"openapi: the document is valid OpenAPI {doc['openapi']} ({len(doc['paths'])} paths), and {len(checked)} answers match its schemas")
