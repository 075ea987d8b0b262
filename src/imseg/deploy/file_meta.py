"""The imseg metadata an exported file carries, parsed the same way whichever runtime read it."""
from __future__ import annotations

import json
from pathlib import Path

from imseg.meta import MetadataError, ModelMeta


def embedded_meta(raw: str, path: Path, where: str) -> ModelMeta:
    """The `ModelMeta` JSON an exported file carries (``where``: the part of the file that holds it).

    One line naming ``path`` when it is damaged, whichever runtime read it.
    """
    from imseg.engine.checkpoint import CheckpointError

    try:
        return ModelMeta.from_dict(json.loads(raw), str(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the imseg {where} is not valid JSON ({e})") from None
    except MetadataError as e:
        raise CheckpointError(str(e)) from None
