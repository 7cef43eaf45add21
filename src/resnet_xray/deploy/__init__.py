"""Make a ResNet fast and prove it still computes the same function.

``fuse`` folds BatchNorm into convolutions, ``onnx`` exports and checks against
eager PyTorch, ``quantize`` builds INT8 models (ONNX Runtime QDQ and PyTorch FX),
``tensorrt`` builds engines where a GPU is present, and ``bench`` times every path
side by side in one process.
"""
