"""SAE formats behind one registry: each module converts its layout into the in-memory `Sae`.

A folder's format is detected from the files it holds, never from words in its path.
"""

from __future__ import annotations

from pathlib import Path

from . import gemmascope, saelens, sparsify
from .base import ARCHITECTURES, Sae, SaeConfig, SparseCodes
from .files import SaeFormatError

FORMATS = {module.NAME: module for module in (sparsify, saelens, gemmascope)}

__all__ = ["ARCHITECTURES", "FORMATS", "Sae", "SaeConfig", "SaeFormatError", "SparseCodes", "detect_format",
           "load_sae", "save_sae"]


def detect_format(folder: str | Path) -> str:
    folder = Path(folder)
    if not folder.is_dir():
        raise SaeFormatError(f"SAE folder {folder} does not exist")
    present = sorted(p.name for p in folder.iterdir())
    for name, module in FORMATS.items():
        if all((folder / f).is_file() for f in module.FILES):
            return name
    needs = "; ".join(f"{name} needs {' + '.join(module.FILES)}" for name, module in FORMATS.items())
    raise SaeFormatError(
        f"no SAE format recognised in {folder}: found {present or 'no files'}. Known layouts: {needs}"
    )


def load_sae(folder: str | Path, hookpoint: str | None = None) -> Sae:
    """Load an SAE from a local folder in any known layout."""
    folder = Path(folder)
    sae = FORMATS[detect_format(folder)].load(folder)
    if hookpoint is not None:
        sae.cfg.hookpoint = hookpoint
    return sae


def save_sae(sae: Sae, folder: str | Path) -> str:
    """Write in the sparsify layout where it can hold the SAE (TopK), else SAELens; returns the format used."""
    module = sparsify if sae.cfg.architecture == "topk" else saelens
    module.save(sae, Path(folder))
    return module.NAME
