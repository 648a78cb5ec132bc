"""Runs a model kiln exported as ONNX (`kiln models export NAME --format onnx`) in onnxruntime
and compares its answers with `kiln predict`'s on the same rows: labels exactly, numbers within
1e-5 (relative above 1). Exits non-zero on any disagreement.

    python3 examples/clients/onnx_export_check.py model.onnx data.csv predictions.csv
"""
import csv
import sys

import numpy as np
import onnxruntime as ort

model, data, predictions = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
rows = list(csv.DictReader(open(data)))
kiln = list(csv.DictReader(open(predictions)))
assert len(rows) == len(kiln), (len(rows), len(kiln))


def column(name, kind):
    values = [r[name] for r in rows]
    if kind == "tensor(string)":
        return np.array(values, dtype=object).reshape(-1, 1)
    return np.array([float(v) if v not in ("", "NA") else np.nan for v in values], dtype=np.float32).reshape(-1, 1)


feeds = {i.name: column(i.name, i.type) for i in session.get_inputs()}
outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
header = list(kiln[0].keys())
if "probabilities" in outputs:
    labels = [h[2:] for h in header if h.startswith("p_")]
    want = np.array([[float(r[f"p_{l}"]) for l in labels] for r in kiln])
    got = outputs["probabilities"].astype(np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    worst = np.abs(got - want).max()
    assert worst <= 1e-5, worst
    assert [str(v) for v in outputs["label"]] == [r[header[0]] for r in kiln]
else:
    want = np.array([float(r[header[0]]) for r in kiln])
    got = next(iter(outputs.values())).reshape(-1).astype(np.float64)
    worst = np.abs(got - want).max()
    assert (np.abs(got - want) <= 1e-5 * np.maximum(1.0, np.abs(want))).all(), worst
print(f"onnxruntime: {model.rsplit('/', 1)[-1]} agrees with kiln predict on {len(rows)} rows "
      f"(largest difference {worst:.2g}; inputs {', '.join(feeds)[:60]}…)")
