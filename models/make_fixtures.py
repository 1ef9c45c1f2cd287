"""Small ONNX models for fulcrum's model-loading tests.

    .venv/bin/python models/make_fixtures.py crates/control/tests/fixtures

Each model takes `features` [N, F] float32 and returns one score per backend, built with
onnx's own helper API so the graphs are exact and tiny.
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SCHEMA = "fulcrum-features-v1"
F = 16
OPSET = [helper.make_opsetid("", 17)]


def model(nodes, out_shape, inits=(), schema=SCHEMA, f=F, name="fixture"):
    inp = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, name, [inp], [out], initializer=list(inits))
    m = helper.make_model(graph, opset_imports=OPSET, producer_name="fulcrum-fixtures")
    m.ir_version = 8
    if schema is not None:
        helper.set_model_props(m, {"fulcrum_feature_schema": schema})
    m.doc_string = name
    onnx.checker.check_model(m)
    return m


def const(name, arr):
    return helper.make_tensor(name, TensorProto.FLOAT, arr.shape, arr.astype(np.float32).flatten())


def linear(weights, bias, name):
    """scores = softplus(features @ w + b), shape [N]."""
    w = np.asarray(weights, dtype=np.float32).reshape(F, 1)
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["zb"]),
        helper.make_node("Softplus", ["zb"], ["s2"]),
        helper.make_node("Squeeze", ["s2", "axes"], ["scores"]),
    ]
    inits = [const("w", w), const("b", np.array([bias])),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    return nodes, inits


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Prefers backends with low relative p99 (feature 5): score = softplus(2 - 2 * p99_rel).
    w = np.zeros(F)
    w[5] = -2.0
    nodes, inits = linear(w, 2.0, "prefer-low-p99")
    onnx.save(model(nodes, ["N"], inits, name="prefer-low-p99"), out / "prefer_low_p99.onnx")
    # The same graph claiming another feature schema.
    onnx.save(model(nodes, ["N"], inits, schema="fulcrum-features-v0", name="old-schema"),
              out / "wrong_schema.onnx")
    # No schema in the metadata at all.
    onnx.save(model(nodes, ["N"], inits, schema=None, name="no-schema"), out / "no_schema.onnx")
    # Expects 8 features per backend.
    w8 = np.zeros((8, 1), dtype=np.float32)
    nodes8 = [helper.make_node("MatMul", ["features", "w"], ["z"]),
              helper.make_node("Squeeze", ["z", "axes"], ["scores"])]
    inits8 = [const("w", w8), helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    onnx.save(model(nodes8, ["N"], inits8, f=8, name="eight-features"), out / "wrong_width.onnx")
    # Returns one score for the whole pool instead of one per backend.
    nodes_sum = [helper.make_node("ReduceSum", ["features"], ["scores"], keepdims=0)]
    onnx.save(model(nodes_sum, [], name="one-score"), out / "wrong_output.onnx")
    # Returns NaN for every backend: log(-1 - |x|).
    nodes_nan = [
        helper.make_node("ReduceSum", ["features", "axes"], ["r"], keepdims=0),
        helper.make_node("Abs", ["r"], ["a"]),
        helper.make_node("Neg", ["a"], ["n"]),
        helper.make_node("Sub", ["n", "one"], ["m"]),
        helper.make_node("Log", ["m"], ["scores"]),
    ]
    inits_nan = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), const("one", np.array(1.0))]
    onnx.save(model(nodes_nan, ["N"], inits_nan, name="nan"), out / "nan_output.onnx")
    # Not an ONNX file.
    (out / "corrupt.onnx").write_bytes(b"\x08\x07this is not a protobuf model" * 4)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "crates/control/tests/fixtures")
