"""zo-edge build side: Hugging Face causal LM -> ZO-ported ONNX training graph (torch, transformers, onnx)."""
