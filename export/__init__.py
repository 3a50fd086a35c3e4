"""The PyTorch side: the M3DDM model, checkpoint loading, ONNX export and engine builds."""
