"""The doctor's proof that TensorRT works on this machine, end to end but in seconds.

A tiny FP16 graph with the patterns the real engines rely on (a convolution, a normalisation and a softmax
computed in FP32 between Casts, batched matmuls, a dynamic batch) is built into a strongly typed plan by
the same builder as `make plans`, run through the backend's own engine code (user-managed activation
memory, pinned buffers, name-bound tensors, CUDA graph capture and replay) and compared with ONNX Runtime
on the CPU running the same graph.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

TOLERANCE = 2e-2  # FP16 engine vs FP16 graph on ORT CPU, relative to the output's scale


def tiny_graph(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    c, h = 8, 8
    inits = [
        numpy_helper.from_array((rng.standard_normal((c, 4, 3, 3)) * 0.3).astype(np.float16), "w"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float16) * 0.1, "b"),
        numpy_helper.from_array(np.ones(c, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
        numpy_helper.from_array(np.array([0, c, h * h], np.int64), "flat"),
        numpy_helper.from_array(np.array(c ** -0.5, np.float16), "scale"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["conv"], ["conv32"], to=TensorProto.FLOAT),
        helper.make_node("InstanceNormalization", ["conv32", "gamma", "beta"], ["norm32"], epsilon=1e-5),
        helper.make_node("Cast", ["norm32"], ["norm"], to=TensorProto.FLOAT16),
        helper.make_node("Reshape", ["norm", "flat"], ["kv"]),
        helper.make_node("Transpose", ["kv"], ["q"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kv"], ["logits"]),
        helper.make_node("Mul", ["logits", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["scaled32"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["scaled32"], ["attn32"], axis=-1),
        helper.make_node("Cast", ["attn32"], ["attn"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["attn", "q"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "doctor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 4, h, h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", h * h, c])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run(workdir=None) -> dict:
    """Build, run (eager, then CUDA graph replay) and compare; returns the figures; raises on failure."""
    import onnxruntime as ort

    from runtime.engines import cuda
    from runtime.engines import trt_policy as policy
    from runtime.engines.tensorrt import TrtEngine
    from runtime.engines.trt_build import build_plan

    trt = policy.import_tensorrt()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        onnx_path = tiny_graph(Path(tmp) / "doctor.onnx")
        plan = Path(tmp) / "doctor.plan"
        built = build_plan(trt, onnx_path, plan, [{"x": ([1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 8, 8])}], opt_level=1)
        x = np.random.default_rng(1).standard_normal((3, 4, 8, 8)).astype(np.float16)
        want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        stream = cuda.Stream()
        engine = TrtEngine(trt, trt.Runtime(trt.Logger(trt.Logger.WARNING)), plan, stream)
        memory = cuda.DeviceBuffer(engine.profile_bytes(0))
        try:
            engine.activate(memory, [0])
            eager = engine.run(0, {"x": x})["y"]
            replay = engine.run(0, {"x": x})["y"]
            graphs = len(engine.graphs)
        finally:
            engine.close()
            memory.free()
            stream.destroy()
    scale = float(np.abs(want.astype(np.float32)).max())
    err = float(np.abs(eager - want.astype(np.float32)).max() / scale)
    result = {"build_seconds": built["build_seconds"], "max_rel_error": err, "cuda_graph": graphs > 0,
              "replay_equals_eager": bool(np.array_equal(eager, replay))}
    if err > TOLERANCE:
        raise RuntimeError(f"the TensorRT test engine differs from ONNX Runtime by {err:.2e} of scale "
                           f"(tolerance {TOLERANCE})")
    if not result["replay_equals_eager"]:
        raise RuntimeError("the CUDA graph replay of the test engine differs from its eager run")
    return result
