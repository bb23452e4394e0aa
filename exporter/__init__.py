"""Official checkpoints → model bundle → ONNX → TensorRT → Triton model repository."""
