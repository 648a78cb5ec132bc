"""Asks a running `kiln serve` about imported ONNX models with tritonclient.http, the way Triton
and KServe users do, and compares every answer with onnxruntime's on the same rows (kept in
`tests/fixtures/onnx/NAME.expected.json`): labels exactly, numbers within 1e-5 (relative for
values above 1). Numeric models get one `[N, k]` FP32 tensor; mixed ones a tensor per column,
for the rows without a missing value (kiln takes a missing value as JSON null, which typed
tensors cannot carry; the in-process tests cover those rows).

    python3 examples/clients/onnx_check.py http://127.0.0.1:8080 MODEL=FIXTURE [MODEL=FIXTURE …]
"""
import json
import pathlib
import sys

import numpy as np
import tritonclient.http as httpclient

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "onnx"

url, pairs = sys.argv[1], sys.argv[2:]
client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
for pair in pairs:
    model, fixture = pair.split("=")
    expected = json.loads((FIXTURES / f"{fixture}.expected.json").read_text())
    columns = expected["columns"]
    keep = [i for i, r in enumerate(expected["rows"]) if None not in r]
    rows = [expected["rows"][i] for i in keep]
    assert client.is_model_ready(model), model
    meta = client.get_model_metadata(model)
    assert [i["name"] for i in meta["inputs"]] == columns, (model, meta["inputs"])
    texts = {i["name"] for i in meta["inputs"] if i["datatype"] == "BYTES"}
    if texts:
        inputs = []
        for j, c in enumerate(columns):
            if c in texts:
                t = httpclient.InferInput(c, [len(rows)], "BYTES")
                t.set_data_from_numpy(np.array([r[j] for r in rows], dtype=object))
            else:
                t = httpclient.InferInput(c, [len(rows)], "FP64")
                t.set_data_from_numpy(np.array([np.nan if r[j] is None else r[j] for r in rows], dtype=np.float64))
            inputs.append(t)
    else:
        x = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float32)
        t = httpclient.InferInput("x", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=True)
        inputs = [t]
    answer = client.infer(model, inputs)
    outputs = {k: [v[i] for i in keep] for k, v in expected["outputs"].items()}
    labels = [v for v in outputs.values() if v and not isinstance(v[0], (list, float))]
    numbers = [np.array(v, dtype=np.float64) for v in outputs.values() if v and isinstance(v[0], (list, float))]
    assert len(numbers) == 1, (fixture, outputs.keys())
    want = numbers[0].reshape(len(rows), -1)
    names = [o["name"] for o in meta["outputs"]]
    if "probabilities" in names:
        got = answer.as_numpy("probabilities").astype(np.float64)
        if want.shape[1] == 1:  # one probability per row: the positive class's
            want = np.hstack([1 - want, want])
        kiln_labels = [v.decode() for v in answer.as_numpy("label")]
        classes = meta["parameters"]["labels"]
        want_labels = [str(v) for v in labels[0]] if labels else [classes[i] for i in want.argmax(axis=1)]
        assert kiln_labels == want_labels, (fixture, kiln_labels, want_labels)
    else:
        got = answer.as_numpy(names[0]).astype(np.float64).reshape(len(rows), -1)
    assert got.shape == want.shape, (fixture, got.shape, want.shape)
    tolerance = 1e-5 * np.maximum(1.0, np.abs(want))
    worst = np.abs(got - want).max()
    assert (np.abs(got - want) <= tolerance).all(), (fixture, worst)
    print(f"onnx {fixture}: {len(rows)} rows agree with onnxruntime through tritonclient.http "
          f"(largest difference {worst:.2g})")
