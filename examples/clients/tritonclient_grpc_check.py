"""Asks a running `kiln serve --grpc-addr` with NVIDIA's standard Python client,
tritonclient.grpc, the way Triton and KServe users do, and checks that every answer equals what
V2 over REST (tritonclient.http) gives: health, server and model metadata, inference with the
client's binary tensors (`raw_input_contents`), typed `contents` (through the client's own
generated stub, as KServe's clients send them), one tensor per column, and errors, which carry
REST's message under the matching gRPC code. Exits non-zero on any disagreement.

    python3 examples/clients/tritonclient_grpc_check.py 127.0.0.1:8081 http://127.0.0.1:8080 MODEL data.csv TARGET
"""
import csv
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

grpc_url, http_url, model, data, target = sys.argv[1:6]
rows = list(csv.DictReader(open(data)))[:8]
columns = [c for c in rows[0] if c != target]
x = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float32)

client = grpcclient.InferenceServerClient(url=grpc_url)
rest = httpclient.InferenceServerClient(url=http_url.removeprefix("http://"))

assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
assert not client.is_model_ready(model + "-missing")
server = client.get_server_metadata(as_json=True)
assert server["name"] == rest.get_server_metadata()["name"] == "kiln", server

meta = client.get_model_metadata(model, as_json=True)
rest_meta = rest.get_model_metadata(model)
for key in ("name", "versions", "platform"):
    assert meta[key] == rest_meta[key], (key, meta[key], rest_meta[key])
for side in ("inputs", "outputs"):
    got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[side]]
    want = [(t["name"], t["datatype"], t["shape"]) for t in rest_meta[side]]
    assert got == want, (side, got, want)

# The client's default: binary tensors in raw_input_contents.
tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
answer = client.infer(model, [tensor], request_id="grpc-1")
assert answer.get_response().id == "grpc-1"
p_grpc = answer.as_numpy("probabilities")
labels = answer.as_numpy("label")
assert p_grpc.shape == (len(rows), 2) and labels.shape == (len(rows),)

http_tensor = httpclient.InferInput("x", list(x.shape), "FP32")
http_tensor.set_data_from_numpy(x, binary_data=True)
http_answer = rest.infer(model, [http_tensor])
assert np.array_equal(p_grpc, http_answer.as_numpy("probabilities")), (p_grpc, http_answer.as_numpy("probabilities"))
assert list(labels) == list(http_answer.as_numpy("label")), (labels, http_answer.as_numpy("label"))

only = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("label")])
assert only.as_numpy("probabilities") is None and list(only.as_numpy("label")) == list(labels)

per_column = []
for j, c in enumerate(columns):
    t = grpcclient.InferInput(c, [len(rows)], "FP64")
    t.set_data_from_numpy(x[:, j].astype(np.float64))
    per_column.append(t)
p_columns = client.infer(model, per_column, model_version="1").as_numpy("probabilities")
assert np.allclose(p_columns, p_grpc, atol=1e-6), (p_columns, p_grpc)

# Typed contents, through the stub tritonclient generates from Triton's grpc_service.proto.
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_url))
request = service_pb2.ModelInferRequest(model_name=model, id="typed")
typed = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
typed.contents.fp32_contents.extend(x.flatten().tolist())
reply = stub.ModelInfer(request)
assert reply.model_name == model and reply.id == "typed"
names = [o.name for o in reply.outputs]
p_typed = np.frombuffer(reply.raw_output_contents[names.index("probabilities")], dtype=np.float32)
assert np.array_equal(p_typed.reshape(p_grpc.shape), p_grpc), (p_typed, p_grpc)

def refusal(call):
    try:
        call()
    except grpcclient.InferenceServerException as e:
        return e.status(), e.message()
    raise AssertionError("no error")

def rest_refusal(call):
    try:
        call()
    except httpclient.InferenceServerException as e:
        return e.message()
    raise AssertionError("no error")

code, message = refusal(lambda: client.infer(model + "-missing", [tensor]))
assert code == "StatusCode.NOT_FOUND", code
assert message == rest_refusal(lambda: rest.infer(model + "-missing", [http_tensor])), message

wrong = grpcclient.InferInput("x", [len(rows), 3], "FP32")
wrong.set_data_from_numpy(x[:, :3].copy())
http_wrong = httpclient.InferInput("x", [len(rows), 3], "FP32")
http_wrong.set_data_from_numpy(x[:, :3].copy(), binary_data=True)
code, message = refusal(lambda: client.infer(model, [wrong]))
assert code == "StatusCode.INVALID_ARGUMENT", code
assert message == rest_refusal(lambda: rest.infer(model, [http_wrong])), message
assert "shape" in message, message

code, message = refusal(lambda: client.get_model_config(model))
assert code == "StatusCode.UNIMPLEMENTED" and "ModelConfig" in message, (code, message)

print(f"tritonclient.grpc: {len(rows)} rows agree with V2 over REST over raw, typed and per-column tensors, metadata and errors")
