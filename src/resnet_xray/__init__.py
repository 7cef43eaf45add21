"""resnet-xray: take a torchvision ResNet apart layer by layer, then make it fast and useful."""
__version__ = "0.1.0"
