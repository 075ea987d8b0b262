"""imseg: semantic image segmentation in PyTorch.

    import imseg
    model = imseg.create_model("deeplabv3plus", num_classes=11, encoder="resnet50")
    model = imseg.load_model("runs/demo/checkpoints/best.pt")
    mask = imseg.predict(model, "street.png")
"""
from imseg.engine.checkpoint import load_model
from imseg.engine.predict import predict
from imseg.models.registry import create_model, list_models, model_info
from imseg.preprocessing import CAFFE, TORCHVISION, Preprocessing

__all__ = [
    "CAFFE",
    "TORCHVISION",
    "Preprocessing",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "predict",
]
__version__ = "0.1.0"
