"""Files: crash-safe checkpoints (``checkpoint``), model files that never run code (``pruned``) and exports to
ONNX, TorchScript and ``torch.export`` (``export``)."""
