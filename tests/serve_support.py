"""What the `imseg serve` tests share: a tiny model file, hostile uploads, a free port, a running server."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "serve"


def write_tiny_checkpoint(path: Path) -> Path:
    """An untrained U-Net (base 4 channels, BatchNorm, dropout 0.5: Monte-Carlo dropout works) with CamVid's
    classes, colours and torchvision preprocessing, saved as an imseg checkpoint. Untrained is enough: the
    tests compare the server with `imseg predict` on the same file, not with the ground truth."""
    import torch

    from imseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE
    from imseg.engine.checkpoint import save_checkpoint
    from imseg.meta import ModelMeta
    from imseg.models import create_model
    from imseg.preprocessing import TORCHVISION

    torch.manual_seed(0)
    model = create_model("unet_original", len(CAMVID_CLASSES), base_channels=4, batch_norm=True)
    meta = ModelMeta(spec=model.imseg_spec, preprocessing=TORCHVISION, class_names=tuple(CAMVID_CLASSES),
                     palette=tuple(tuple(c) for c in CAMVID_PALETTE[: len(CAMVID_CLASSES)]))
    save_checkpoint({**meta.to_dict(), "state_dict": model.state_dict()}, path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width`` x ``height`` grey pixels (a decompression
    bomb: decoding it would need width x height bytes). Its data stops after one row: a server that decodes
    before checking the size has already lost."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """``imseg serve MODEL --port PORT`` as a child process (its output to ``log``)."""
    imseg = str(Path(sys.executable).with_name("imseg"))
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    return subprocess.Popen([imseg, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), *extra],
                            stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until_up(proc: subprocess.Popen, port: int, timeout: float = 60, log: Path | None = None) -> None:
    """Poll ``GET /api/info`` until it answers; fail with the server's output if it exits or never answers."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"imseg serve exited with {proc.returncode}: "
                               f"{log.read_text()[-3000:] if log else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"imseg serve did not answer within {timeout} s: {log.read_text()[-3000:] if log else ''}")
