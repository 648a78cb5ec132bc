"""Logging throughput of the unmodified mlflow client against a tracking server: N single
log_metric calls and B log_batch calls of 1,000 metrics each. Run it against kiln and against
`mlflow server` (SQLite store) on the same machine in the same session, and compare:

    python benches/mlflow_client.py http://127.0.0.1:8080 [N] [B]

Prints one JSON line: milliseconds per single metric and per batch of 1,000."""

import json
import sys
import time

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

url = sys.argv[1]
singles = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
batches = int(sys.argv[3]) if len(sys.argv) > 3 else 20
mlflow.set_tracking_uri(url)
client = MlflowClient()
run = client.create_run(mlflow.set_experiment("throughput").experiment_id)
run_id = run.info.run_id

start = time.perf_counter()
for i in range(singles):
    client.log_metric(run_id, "loss", 1.0 / (i + 1), step=i)
single_ms = (time.perf_counter() - start) * 1000 / singles

start = time.perf_counter()
for b in range(batches):
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric("m", float(i), now, b * 1000 + i) for i in range(1000)]
    )
batch_ms = (time.perf_counter() - start) * 1000 / batches
client.set_terminated(run_id)
print(json.dumps({"server": url, "single_metric_ms": round(single_ms, 3),
                  "batch_of_1000_ms": round(batch_ms, 2), "singles": singles, "batches": batches}))
