"""`imseg.from_pretrained`: a model folder on disk, or one on the Hugging Face Hub by its id.

A path that exists is read as it is, with no network and no `huggingface_hub`
import. Anything else of the form ``owner/name`` is a hub id: downloading,
the cache (one copy per revision, in ``HF_HUB_CACHE`` or ``cache_dir``) and
offline mode are `huggingface_hub`'s, so a model fetched once loads again
offline. Every failure is one `CheckpointError` line naming the id.

Separate from imseg/pretrained.py because this reads through the engine
(`read_pretrained_folder`, `build_model`), which imports the models, which
import pretrained.py for `save_pretrained`.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from imseg.engine.checkpoint import CheckpointError, build_model, read_model_file, read_pretrained_folder
from imseg.pretrained import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

# The Hub's own rule for ids (huggingface_hub.utils.validate_repo_id), narrowed to "owner/name".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def from_pretrained(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                    device: str = "cpu") -> nn.Module:
    """The model (eval mode) in a model folder written by ``model.save_pretrained``, given by its path or by
    its hub id ``owner/name`` (downloaded once, at ``revision``: a branch, tag or commit; default main)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if revision is not None:  # ignoring it would load other weights than the ones asked for
            raise CheckpointError(f"{path} is a local folder; revision={revision!r} applies to hub ids only")
        return read_model_file(path, device)[0]
    name = str(name_or_path)
    if not _HUB_ID.match(name) or ".." in name or "--" in name:
        raise CheckpointError(f"{name}: no such folder, and not a Hugging Face Hub id of the form owner/name")
    label = f"{name}@{revision}" if revision else name
    folder = download(name, revision, cache_dir)
    meta, weights = read_pretrained_folder(folder, label)
    return build_model(meta, weights, f"{label}/{WEIGHTS_NAME}").to(device).eval()


def download(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The snapshot folder of hub model ``repo_id``, downloaded into the cache unless already there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    from imseg import __version__

    label = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, library_name="imseg",
                                      library_version=__version__,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except LocalEntryNotFoundError as e:  # no network (or HF_HUB_OFFLINE=1) and not in the cache
        raise CheckpointError(f"hub model {label} is not in the cache and cannot be downloaded "
                              f"({_first_line(e)}): connect once to cache it, or pass a local folder holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"hub model {repo_id} has no revision {revision!r} (a branch, tag or commit)") from None
    except RepositoryNotFoundError:  # the Hub answers the same for private and gated repositories
        raise CheckpointError(f"hub model {repo_id} does not exist, or is private or gated (log in with "
                              f"`hf auth login`); there is no local folder {repo_id} either") from None
    except (OSError, ValueError) as e:  # other HTTP errors, a full disk, an id the Hub refuses
        raise CheckpointError(f"cannot download hub model {label}: {_first_line(e)}; pass a local folder "
                              f"holding {CONFIG_NAME} and {WEIGHTS_NAME}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
