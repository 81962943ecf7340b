"""A montage of a manifest's cases (one row per case: every channel and the mask outline), as PNG."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.manifest import load_manifest

__all__ = ["preview_manifest"]


def _on_first_grid(paths: list[str]) -> tuple[list[np.ndarray], nib.Nifti1Image]:
    """Every file resampled onto the first one's grid (display only), reoriented to RAS."""
    from nibabel.processing import resample_from_to

    ref = nib.as_closest_canonical(nib.load(paths[0]))
    vols = []
    for p in paths:
        if p is None:  # a channel the case lacks (null): shown blank
            vols.append(np.zeros(ref.shape[:3], np.float32))
            continue
        img = nib.load(p)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            img = resample_from_to(img, (ref.shape[:3], ref.affine), order=1)
        vols.append(np.asanyarray(img.dataobj, dtype=np.float32).reshape(ref.shape[:3]))
    return vols, ref


def preview_manifest(manifest: str | Path, out: str | Path, cases: int = 4, dataset_dir=None) -> Path:
    """Write a PNG montage of up to ``cases`` cases (those with a lesion first) of a manifest."""
    from pipeline.figures import lesion_slice, pyplot, save_figure

    plt = pyplot()
    data = load_manifest(manifest, dataset_dir)
    entries = data.get("training", []) + data.get("testing", [])
    entries = sorted(entries, key=lambda c: -(c.get("lesion_ml") or 0))[:cases] if entries else []
    channels = data.get("channels") or [f"channel {i}" for i in range(len(entries[0]["image"]))]
    ncol = len(channels) + 1
    fig, axes = plt.subplots(len(entries), ncol, figsize=(2.6 * ncol, 2.8 * len(entries)), squeeze=False)
    for row, case in zip(axes, entries, strict=False):
        paths = case["image"] + ([case["label"]] if case.get("label") else [])
        vols, ref = _on_first_grid(paths)
        mask = vols[-1] > 0.5 if case.get("label") else None
        z = lesion_slice(mask) if mask is not None else ref.shape[2] // 2
        for ax, vol, name, path in zip(row, vols, channels, paths, strict=False):
            sl = np.rot90(vol[:, :, z])
            ax.imshow(sl, cmap="gray", vmin=0, vmax=np.percentile(vol[vol > 0], 99.5) if (vol > 0).any() else 1)
            ax.set_title(f"{name.upper()}" + (" (none: null)" if path is None else ""), fontsize=9)
        ax = row[-1]
        ax.imshow(np.rot90(vols[0][:, :, z]), cmap="gray")
        if mask is not None and mask[:, :, z].any():
            ax.contour(np.rot90(mask[:, :, z]), levels=[0.5], colors="red", linewidths=0.8)
        ml = case.get("lesion_ml")
        ax.set_title(f"{channels[0].upper()} + mask" + (f" ({ml:.1f} mL)" if ml is not None else ""), fontsize=9)
        row[0].set_ylabel(f"{case['id']}\nz={z}", fontsize=8)
        for a in row:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{Path(manifest).name}: axial slices through the largest lesion (RAS, anterior up)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)
