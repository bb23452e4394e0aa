"""FaceAnonyMixer core: networks, checkpoints, the model bundle (plain PyTorch, no Triton)."""

__version__ = "0.1.0"
