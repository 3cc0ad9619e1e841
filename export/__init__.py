"""Export and run: ONNX with KV cache (onnx.py, passes.py, onnx_quant.py, tied_embedding.py,
validate.py, step.py), ONNX Runtime runner (ort_runner.py), text generation on any runner
(generate.py), TensorRT (tensorrt.py, trt_qdq.py, trt_check.py, trt_ops.py, trt_spec.py,
trt_runner.py, profiles.py). Modules are imported explicitly; nothing heavy loads here.
"""
