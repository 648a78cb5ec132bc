"""Logs to a running kiln with the unmodified `mlflow` client, as a notebook would, and checks
what the client reads back. Prints the run's id; check.sh then reads the same run with kiln's
own command line. Usage: mlflow_check.py URL BUNDLE DATA (MLFLOW_TRACKING_TOKEN holds the server's
token; BUNDLE is a kiln model bundle's directory, DATA a CSV file it scores)."""

import csv
import json
import urllib.request

import math
import os
import sys
import tempfile

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

url, bundle, data = sys.argv[1], sys.argv[2], sys.argv[3]
mlflow.set_tracking_uri(url)
client = MlflowClient()

experiment = mlflow.set_experiment("notebook")
with mlflow.start_run(run_name="first") as run:
    run_id = run.info.run_id
    mlflow.log_param("lr", 0.01)
    mlflow.log_params({"layers": 2, "optimizer": "adam"})
    for step in range(5):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    mlflow.log_metrics({"auc": 0.91, "diverged": float("nan")})
    mlflow.set_tag("team", "growth")
    # Artifacts: a file at the top, and a directory with a nested file.
    scratch = tempfile.mkdtemp()
    with open(os.path.join(scratch, "notes.txt"), "w") as f:
        f.write("first try\n")
    mlflow.log_artifact(os.path.join(scratch, "notes.txt"))
    report = os.path.join(scratch, "report")
    os.makedirs(os.path.join(report, "plots"))
    with open(os.path.join(report, "summary.json"), "w") as f:
        f.write('{"auc": 0.91}')
    with open(os.path.join(report, "plots", "roc.csv"), "wb") as f:
        f.write(bytes(range(256)) * 1000)
    mlflow.log_artifacts(report, artifact_path="report")
    client.log_batch(
        run_id,
        metrics=[Metric("val_loss", 0.5 - i / 100, 0, i) for i in range(100)],
        params=[Param("batch_size", "64")],
        tags=[RunTag("stage", "prototype")],
    )

got = client.get_run(run_id)
assert got.info.status == "FINISHED", got.info.status
assert got.info.run_name == "first", got.info.run_name
assert got.info.experiment_id == experiment.experiment_id
assert got.data.params == {
    "lr": "0.01",
    "layers": "2",
    "optimizer": "adam",
    "batch_size": "64",
}, got.data.params
assert got.data.metrics["loss"] == 0.2, got.data.metrics
assert got.data.metrics["auc"] == 0.91
assert math.isnan(got.data.metrics["diverged"])
assert got.data.metrics["val_loss"] == 0.5 - 99 / 100
assert got.data.tags["team"] == "growth" and got.data.tags["stage"] == "prototype"

top = sorted((a.path, a.is_dir) for a in client.list_artifacts(run_id))
assert top == [("notes.txt", False), ("report", True)], top
inner = sorted((a.path, a.is_dir, a.file_size) for a in client.list_artifacts(run_id, "report"))
assert inner == [("report/plots", True, None), ("report/summary.json", False, 13)], inner
back = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report")
with open(os.path.join(back, "plots", "roc.csv"), "rb") as f:
    assert f.read() == bytes(range(256)) * 1000
with open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="notes.txt")) as f:
    assert f.read() == "first try\n"

history = client.get_metric_history(run_id, "loss")
assert [m.step for m in history] == [0, 1, 2, 3, 4], history
assert [m.value for m in history] == [1.0, 0.5, 1 / 3, 0.25, 0.2]

# Times as the client recorded them: a run's start and end, a metric point's timestamp.
stamped = client.create_run(
    client.create_experiment("stamped"), start_time=1_600_000_000_000, run_name="backdated"
)
client.log_metric(stamped.info.run_id, "loss", 0.5, timestamp=1_600_000_001_000, step=3)
client.set_terminated(stamped.info.run_id, end_time=1_600_000_005_000)
back = client.get_run(stamped.info.run_id).info
assert (back.start_time, back.end_time) == (1_600_000_000_000, 1_600_000_005_000), back
points = client.get_metric_history(stamped.info.run_id, "loss")
assert [(m.timestamp, m.step) for m in points] == [(1_600_000_001_000, 3)], points

with mlflow.start_run(run_name="second"):
    mlflow.log_param("lr", 0.1)
    mlflow.log_metric("auc", 0.7)

found = client.search_runs(
    [experiment.experiment_id],
    filter_string="params.lr = '0.01' and metrics.auc > 0.5",
)
assert [r.info.run_id for r in found] == [run_id], found
found = client.search_runs(
    [experiment.experiment_id],
    filter_string="attributes.status = 'FINISHED' and attributes.run_name LIKE 'fir%' "
    "and params.lr IN ('0.01', '0.5') and params.`optimizer` ILIKE 'ADAM'",
)
assert [r.info.run_id for r in found] == [run_id], found
ordered = client.search_runs([experiment.experiment_id], order_by=["metrics.auc"])
assert [r.data.metrics["auc"] for r in ordered] == [0.7, 0.91], ordered
ordered = client.search_runs([experiment.experiment_id], order_by=["metrics.auc DESC"])
assert [r.data.metrics["auc"] for r in ordered] == [0.91, 0.7], ordered
page = client.search_runs([experiment.experiment_id], max_results=1)
assert len(page) == 1 and page.token, page
rest = client.search_runs([experiment.experiment_id], max_results=1, page_token=page.token)
assert len(rest) == 1 and rest[0].info.run_id != page[0].info.run_id

# What MLflow refuses, kiln refuses with MLflow's codes, and nothing changes.
for call, code in [
    (lambda: client.log_param(run_id, "lr", 0.02), "INVALID_PARAMETER_VALUE"),
    (lambda: client.get_run("ffffffff"), "RESOURCE_DOES_NOT_EXIST"),
    (lambda: client.delete_tag(run_id, "never-set"), "RESOURCE_DOES_NOT_EXIST"),
    (lambda: client.delete_experiment(experiment.experiment_id), "INVALID_PARAMETER_VALUE"),
    (lambda: client.create_experiment("notebook"), "RESOURCE_ALREADY_EXISTS"),
]:
    try:
        call()
    except MlflowException as e:
        assert e.error_code == code, (e.error_code, code, e)
    else:
        raise AssertionError(f"expected {code}")
assert client.get_run(run_id).data.params["lr"] == "0.01"
client.set_tag(run_id, "scratch", "x")
client.delete_tag(run_id, "scratch")
assert "scratch" not in client.get_run(run_id).data.tags
tagged = client.create_experiment("tagged", tags={"owner": "growth"})
client.set_experiment_tag(tagged, "stage", "prototype")
assert client.get_experiment(tagged).tags == {"owner": "growth", "stage": "prototype"}
empty = client.create_experiment("to-rename")
client.rename_experiment(empty, "renamed")
assert client.get_experiment(empty).name == "renamed"
client.delete_experiment(empty)
assert client.get_experiment_by_name("renamed") is None

# The model registry: a version from the run's artifact, an alias, a stage.
client.create_registered_model("notebook-model")
version = client.create_model_version(
    "notebook-model", source=f"runs:/{run_id}/report", run_id=run_id
)
assert version.version == "1" and version.run_id == run_id, version
client.set_registered_model_alias("notebook-model", "champion", "1")
assert client.get_model_version_by_alias("notebook-model", "champion").version == "1"
assert client.get_registered_model("notebook-model").aliases == {"champion": "1"}
# Production is the `champion` alias (what serving follows); Staging is `staging`.
assert client.get_model_version("notebook-model", "1").current_stage == "Production"
client.transition_model_version_stage("notebook-model", "1", "Staging")
assert client.get_registered_model("notebook-model").aliases == {"champion": "1", "staging": "1"}
found = client.search_model_versions("name = 'notebook-model'")
assert [v.version for v in found] == ["1"], found
for call, code in [
    (lambda: client.create_registered_model("notebook-model"), "RESOURCE_ALREADY_EXISTS"),
    (lambda: client.get_model_version_by_alias("notebook-model", "nobody"), "RESOURCE_DOES_NOT_EXIST"),
    (lambda: client.create_model_version("notebook-model", source=f"runs:/{run_id}/nothing", run_id=run_id), "RESOURCE_DOES_NOT_EXIST"),
]:
    try:
        call()
    except MlflowException as e:
        assert e.error_code == code, (e.error_code, code, e)
    else:
        raise AssertionError(f"expected {code}")
assert client.get_experiment_by_name("nowhere") is None
assert mlflow.get_experiment_by_name("Default").experiment_id == "0"

# MLflow 3's logged models: `log_model` with `registered_model_name` makes a logged model, uploads
# its files, finalizes it and registers a version; the model loads back through `models:/`.
import mlflow.pyfunc  # noqa: E402 (pandas comes with it)
import pandas as pd  # noqa: E402


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


with mlflow.start_run(run_name="logged") as logged_run:
    mlflow.log_param("factor", 2)
    info = mlflow.pyfunc.log_model(
        name="doubler", python_model=Doubler(), registered_model_name="notebook-pyfunc"
    )
assert str(info.registered_model_version) == "1", info.registered_model_version
logged = client.get_logged_model(info.model_id)
assert str(logged.status) == "READY", logged.status
assert logged.source_run_id == logged_run.info.run_id and logged.params == {"factor": "2"}
found = client.search_logged_models(
    experiment_ids=[experiment.experiment_id], filter_string="name = 'doubler'"
)
assert [m.model_id for m in found] == [info.model_id], found
loaded = mlflow.pyfunc.load_model("models:/notebook-pyfunc/1")
assert loaded.predict(pd.DataFrame({"x": [1, 2]}))["x"].tolist() == [2, 4]
files = sorted(os.listdir(mlflow.artifacts.download_artifacts("models:/notebook-pyfunc/1")))
assert "MLmodel" in files and "python_model.pkl" in files, files
client.set_logged_model_tags(info.model_id, {"reviewed": "yes"})
assert client.get_logged_model(info.model_id).tags["reviewed"] == "yes"

# Dataset inputs, descriptions and tags of models and versions.
with mlflow.start_run(run_id=logged_run.info.run_id):
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]})
    mlflow.log_input(mlflow.data.from_pandas(frame, name="train"), context="training")
inputs = client.get_run(logged_run.info.run_id).inputs.dataset_inputs
assert [i.dataset.name for i in inputs] == ["train"], inputs
assert inputs[0].tags[0].value == "training", inputs
client.update_registered_model("notebook-pyfunc", description="doubles its input")
client.set_registered_model_tag("notebook-pyfunc", "owner", "growth")
client.update_model_version("notebook-pyfunc", "1", description="first cut")
client.set_model_version_tag("notebook-pyfunc", "1", "validated", "no")
client.delete_model_version_tag("notebook-pyfunc", "1", "validated")
registered = client.get_registered_model("notebook-pyfunc")
assert registered.description == "doubles its input" and registered.tags == {"owner": "growth"}
version = client.get_model_version("notebook-pyfunc", "1")
assert version.description == "first cut" and version.tags == {}, version
client.restore_run(logged_run.info.run_id)
for call, code in [
    (lambda: client.rename_registered_model("notebook-pyfunc", "renamed"), "INVALID_PARAMETER_VALUE"),
    (lambda: client.restore_run("ffffffff"), "RESOURCE_DOES_NOT_EXIST"),
    (lambda: client.delete_registered_model_tag("notebook-pyfunc", "never"), "RESOURCE_DOES_NOT_EXIST"),
    (lambda: client.get_logged_model("m-ffffffffffffffff"), "RESOURCE_DOES_NOT_EXIST"),
]:
    try:
        call()
    except MlflowException as e:
        assert e.error_code == code, (e.error_code, code, e)
    else:
        raise AssertionError(f"expected {code}")

# A large file goes up in parts when the client is told to (MLflow's proxy multipart upload):
# parts of 1 MiB here, joined by kiln into one digested file.
os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"] = "true"
os.environ["MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE"] = str(1 << 20)
os.environ["MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE"] = str(1 << 20)
weights = os.path.join(scratch, "weights.bin")
payload = os.urandom(3 * (1 << 20) + 12345)
with open(weights, "wb") as f:
    f.write(payload)
mlflow.set_experiment("uploads")
with mlflow.start_run() as upload_run:
    mlflow.log_artifact(weights, artifact_path="big")
back = mlflow.artifacts.download_artifacts(
    run_id=upload_run.info.run_id, artifact_path="big/weights.bin"
)
with open(back, "rb") as f:
    assert f.read() == payload
del os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD"]

# A kiln bundle logged from a notebook is servable: its champion alias, set through the client,
# swaps it into the running server.
with mlflow.start_run(run_name="bundle") as bundle_run:
    mlflow.log_artifacts(bundle, artifact_path="bundle")
client.create_registered_model("notebook-bundle")
client.create_model_version(
    "notebook-bundle", source=f"runs:/{bundle_run.info.run_id}/bundle", run_id=bundle_run.info.run_id
)
client.set_registered_model_alias("notebook-bundle", "champion", "1")
with open(data) as f:
    rows = [dict(r) for r, _ in zip(csv.DictReader(f), range(3))]
for row in rows:
    row.pop("label")
    for k in row:
        row[k] = float(row[k])
request = urllib.request.Request(
    f"{url}/v1/models/notebook-bundle:predict",
    data=json.dumps({"instances": rows}).encode(),
    headers={"Content-Type": "application/json"},
)
served = json.load(urllib.request.urlopen(request, timeout=30))
assert len(served["predictions"]) == 3, served

print(run_id)
