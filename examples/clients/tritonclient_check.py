"""Asks a running `kiln serve` with NVIDIA's standard Python client, tritonclient.http, the way
Triton and KServe users do: health, metadata, and inference with binary tensors (the client's
default), JSON tensors and one tensor per column. Exits non-zero on any disagreement.

    python3 examples/clients/tritonclient_check.py http://127.0.0.1:8080 MODEL data.csv TARGET
"""
import csv
import sys

import numpy as np
import tritonclient.http as httpclient

url, model, data, target = sys.argv[1:5]
rows = list(csv.DictReader(open(data)))[:8]
columns = [c for c in rows[0] if c != target]
x = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float32)

client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
meta = client.get_model_metadata(model)
assert [i["name"] for i in meta["inputs"]] == columns, meta["inputs"]
assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"], meta["outputs"]

tensor = httpclient.InferInput("x", list(x.shape), "FP32")
tensor.set_data_from_numpy(x, binary_data=True)
binary = client.infer(model, [tensor], request_id="check-1")
assert binary.get_response()["id"] == "check-1"
p_binary = binary.as_numpy("probabilities")
labels = binary.as_numpy("label")
assert p_binary.shape == (len(rows), 2) and labels.shape == (len(rows),)
assert np.allclose(p_binary.sum(axis=1), 1.0, atol=1e-5)

tensor.set_data_from_numpy(x, binary_data=False)
p_json = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)]).as_numpy("probabilities")
assert np.array_equal(p_json, p_binary), (p_json, p_binary)

per_column = []
for j, c in enumerate(columns):
    t = httpclient.InferInput(c, [len(rows)], "FP64")
    t.set_data_from_numpy(x[:, j].astype(np.float64))
    per_column.append(t)
p_columns = client.infer(model, per_column, model_version="1").as_numpy("probabilities")
assert np.allclose(p_columns, p_binary, atol=1e-6), (p_columns, p_binary)

try:
    client.infer(model + "-missing", [tensor])
    raise AssertionError("an unknown model answered")
except httpclient.InferenceServerException as e:
    assert "no model" in str(e), e

print(f"tritonclient.http: {len(rows)} rows agree over binary, JSON and per-column tensors")
