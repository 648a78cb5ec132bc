"""The usual Python deployment of an ONNX model, for benches/compare/onnx.sh to load against
`kiln serve`: FastAPI under uvicorn (one worker) with onnxruntime, answering the same V2 JSON
request (`inputs[0]` a `[N, k]` FP32 tensor) with the label and the class probabilities.

    MODEL=tests/fixtures/onnx/logreg.onnx python -m uvicorn --app-dir benches/compare onnx_fastapi:app
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

session = ort.InferenceSession(os.environ["MODEL"], providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
app = FastAPI()


@app.post("/v2/models/bc/infer")
async def infer(request: Request):
    body = await request.json()
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    labels, probabilities = session.run(None, {input_name: x})
    # skl2onnx's ZipMap answers one {label: probability} per row.
    rows = [list(p.values()) for p in probabilities] if isinstance(probabilities, list) else probabilities.tolist()
    return {
        "model_name": "bc",
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [len(rows)], "data": [str(v) for v in labels]},
            {"name": "probabilities", "datatype": "FP32", "shape": [len(rows), len(rows[0])],
             "data": [v for r in rows for v in r]},
        ],
    }
