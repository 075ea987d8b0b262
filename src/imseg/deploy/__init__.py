"""Deployment: exported model files run by onnxruntime, OpenVINO or ExecuTorch behind one `Backend` contract.

``open_backend(path)`` opens any model file imseg writes; ``backend_model``
makes it a module the engine's predict / evaluate loop drives. The exporters
that write these files are in `imseg.deploy.export_*`; the runtimes are pip
extras (``imseg[export]`` for onnxruntime, ``imseg[deploy]`` for OpenVINO and
NNCF, ``imseg[mobile]`` for ExecuTorch).
"""
from imseg.deploy.backends import BACKENDS, Backend, open_backend
from imseg.deploy.module import BackendModel, backend_model, load_runtime_model

__all__ = ["BACKENDS", "Backend", "BackendModel", "backend_model", "load_runtime_model", "open_backend"]
