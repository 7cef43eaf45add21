"""``resnet-xray explore``: a local web page that follows a photo through a real ResNet, on request.

The page asks; the server answers with the project's own pieces: the trace for every op's
output (:mod:`resnet_xray.tracing`), the anatomy for shapes, receptive fields and MACs
(:mod:`resnet_xray.dissect`), Grad-CAM (:mod:`resnet_xray.viz.cam`) and the per-layer
comparison (:mod:`resnet_xray.tracing.divergence`). ``workspace`` holds the models, photos and
cached activations; ``pictures`` turns tensors into PNGs; ``server`` is the FastAPI app.
Nothing is imported here, so ``explore --help`` loads no torch.
"""
