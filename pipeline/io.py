"""File input/output that never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib

__all__ = ["atomic_path", "save_nifti_atomic", "write_json_atomic", "write_yaml_atomic"]


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the full suffix (".nii.gz") so writers that look at it pick the right format
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the mode a plain open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_nifti_atomic(img: nib.Nifti1Image, path: str | Path) -> Path:
    """Write a NIfTI image to a temporary name, then rename it into place."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def write_yaml_atomic(data, path: str | Path) -> Path:
    """Write YAML (block style, keys in the given order) atomically."""
    import yaml

    with atomic_path(path) as tmp:
        plain = json.loads(json.dumps(data))  # no shared objects, so no YAML anchors in the file
        tmp.write_text(yaml.safe_dump(plain, sort_keys=False, default_flow_style=None))
    return Path(path)


def write_json_atomic(data, path: str | Path) -> Path:
    """Write JSON (indented, trailing newline) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)
