"""Use a trained model: read new radiographs, predict, export (TorchScript, ONNX), MLflow models."""
