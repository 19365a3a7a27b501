"""Atomic checkpoint files that load without unpickling arbitrary objects."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from recrl.fileio import write_bytes_atomic
from recrl.types import RecrlError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, nested dicts/lists) to ``path`` atomically.

    The file is written to a temporary name in the same folder and renamed over ``path``, so an
    interrupted save (Ctrl-C, crash) leaves the previous checkpoint intact.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def resolve_checkpoint(where: str | Path) -> Path:
    """A checkpoint file from a file path or a run folder (its ``checkpoints/last.pt``)."""
    p = Path(where).expanduser()
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if candidate.is_file():
                return candidate
        raise RecrlError(f"no checkpoint in {p}: expected {p / 'checkpoints' / 'last.pt'}")
    if not p.is_file():
        raise RecrlError(f"checkpoint {p} does not exist: pass a run folder or a .pt file")
    return p


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint file belongs to: the parent of its ``checkpoints/`` folder,
    or the folder holding a loose ``.pt``."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_checkpoint(where: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs on load)."""
    path = resolve_checkpoint(where)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file, foreign pickle, truncated write
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecrlError(f"cannot read checkpoint {path}: {first}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise RecrlError(f"{path} is not a recrl checkpoint of format {FORMAT_VERSION}")
    return payload
