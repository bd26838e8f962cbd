"""Reading the files of an SAE folder: one helper for every codec, so a truncated or corrupt file is an error
that names the file and the fix, whichever format it belongs to."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file


class SaeFormatError(ValueError):
    """A folder does not hold an SAE in any known layout, or one of its files cannot be read."""


def read_sae_file(path: Path) -> dict:
    """The contents of one SAE file: a cfg.json mapping, or the named tensors (safetensors) or arrays (npz)."""
    try:
        if path.suffix == ".json":
            content = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(content, dict):
                raise ValueError(f"expected a JSON object, found {type(content).__name__}")
            return content
        if path.suffix == ".safetensors":
            return load_file(path)
        if path.suffix == ".npz":
            with np.load(path) as arrays:  # read every array now: a truncated member fails here, not later
                return {name: arrays[name] for name in arrays.files}
    except (SafetensorError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise SaeFormatError(f"SAE file {path} cannot be read ({err}): it is truncated or corrupt; "
                             f"{_fix(path)}") from None
    raise SaeFormatError(f"SAE file {path}: no reader for {path.suffix!r} files")


def _fix(path: Path) -> str:
    folder = path.parent
    # A copy committed to the lake (lake/saes/layer=.../sae=...) is rebuilt from its source once deleted.
    if folder.name.startswith("sae=") and folder.parent.name.startswith("layer="):
        return f"delete the SAE partition {folder} to rebuild it"
    return "re-download or re-export it (or delete the SAE partition lake/saes/layer=.../sae=... to rebuild it)"
