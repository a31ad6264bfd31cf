"""zo-edge device side: numpy + onnxruntime + psutil + tokenizers, never torch.

Kept light on purpose: ``from runtime import contract`` is what export/ does, and it must not load onnxruntime.
"""
