"""The fast inference path gives what the plain MONAI path gives: grid copies, SimpleITK resampling,
ONNX runtimes, and 8-fold mirroring."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from conftest import write_nifti
from pipeline.data.checks import LoadCheckedd
from pipeline.data.sitk_transforms import ResampleToGridd
from pipeline.data.transforms import RAS_LABELS
from pipeline.inference import aligned_copy, lesion_probability, mirrorings, to_grid
from pipeline.models.networks import build_network
from pipeline.runtimes import compile_network, resolve_runtime


def _lps_affine(spacing=(1.2, 0.9, 3.0), degrees=0.0):
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [40.0, 30.0, -12.0]
    return affine


def test_reoriented_and_cropped_map_is_copied_back_exactly_as_monai_resamples_it():
    rng = np.random.default_rng(0)
    native = MetaTensor(torch.as_tensor(rng.random((1, 30, 26, 9), dtype=np.float32)), affine=_lps_affine())
    ras = mt.Orientation(axcodes="RAS", labels=RAS_LABELS)(native)
    cropped = mt.SpatialCrop(roi_start=[3, 2, 1], roi_end=[25, 20, 8])(ras)
    reference = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), _lps_affine())
    fast = aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), reference.affine, reference.shape)
    dst = MetaTensor(torch.zeros((1, 30, 26, 9)), affine=torch.as_tensor(reference.affine))
    slow = mt.ResampleToMatch(mode="bilinear", padding_mode="zeros")(cropped, dst)[0].numpy()
    assert fast is not None and np.abs(fast - slow).max() < 1e-5
    inside = np.zeros_like(fast, dtype=bool)
    inside[5:27, 6:24, 1:8] = True  # the kept region in LPS voxel order: x = 29 - x_ras, y = 25 - y_ras
    assert np.array_equal(fast[inside], native[0].numpy()[inside]) and not fast[~inside].any()
    # an oblique destination is no copy: to_grid falls back to resampling
    oblique = nib.Nifti1Image(np.zeros((30, 26, 9), np.float32), _lps_affine(degrees=10))
    assert aligned_copy(cropped[0].numpy(), np.asarray(cropped.affine), oblique.affine, oblique.shape) is None
    assert to_grid(cropped[0].numpy(), np.asarray(cropped.affine), oblique).shape == (30, 26, 9)


def test_simpleitk_channel_resampling_matches_monai_on_oblique_grids(tmp_path):
    rng = np.random.default_rng(1)
    i, j, k = np.indices((40, 36, 12))
    smooth = (np.sin(i / 5) + np.cos(j / 4) + k / 6).astype(np.float32) * 100 + 300
    noise = rng.random((32, 30, 10)).astype(np.float32)
    dst = write_nifti(tmp_path / "dwi.nii.gz", noise, _lps_affine((1.5, 1.5, 3.5)))
    src = write_nifti(tmp_path / "flair.nii.gz", smooth, _lps_affine((1.1, 1.2, 2.8), degrees=9))
    d = LoadCheckedd(["a", "b"])({"a": str(dst), "b": str(src)})
    ours = ResampleToGridd(["b"], key_dst="a")(dict(d))["b"]
    monai = mt.ResampleToMatchd(["b"], key_dst="a", mode="bilinear", padding_mode="zeros")(dict(d))["b"]
    assert ours.shape == monai.shape == d["a"].shape
    assert np.allclose(np.asarray(ours.affine), np.asarray(d["a"].affine))
    # the same values inside the source's field of view; they differ only in the half voxel at its edge,
    # which MONAI blends with the zero padding and SimpleITK leaves out
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(((ours[0] > 0) & (monai[0] > 0)).numpy())
    assert inside.mean() > 0.3 and float(((ours[0] > 0) ^ (monai[0] > 0)).float().mean()) < 0.05
    assert float((ours[0] - monai[0]).abs().numpy()[inside].max()) < 1e-3 * float(smooth.max())


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_onnx_runtimes_match_eager_pytorch_and_follow_the_window_size(runtime, tmp_path):
    torch.manual_seed(0)
    net = build_network("unet", 3, 2, "softmax", channels=[8, 16, 32], strides=[2, 2], num_res_units=1).eval()
    cpu = torch.device("cpu")
    assert resolve_runtime(runtime, cpu) == runtime
    x = torch.randn(3, 2, 32, 32, 32)
    compiled = compile_network(net, runtime, cpu, 2, [32, 32, 32])
    with torch.no_grad():
        assert float((compiled(x) - net(x)).abs().max()) < 1e-3
        image = torch.randn(1, 2, 50, 41, 37)
        eager = lesion_probability(net, image, 3, [32, 32, 32])[0]
        fast = lesion_probability(compiled, image, 3, [32, 32, 32])[0]
    assert float((eager - fast).abs().max()) < 1e-3
    from pipeline.runtimes import export_onnx

    onnx = export_onnx(net, tmp_path / "model.onnx", 2, [32, 32, 32])
    other_window = compile_network(net, runtime, cpu, 2, [16, 16, 16], onnx_path=onnx)
    assert other_window.window_shape == [2, 16, 16, 16]  # a stale ONNX file is exported again, not misused


def test_tta_averages_all_eight_mirrorings():
    assert mirrorings([0, 1, 2]) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    seen = []

    class Corner(torch.nn.Module):  # lesion logit grows towards one corner: not mirror-symmetric
        def forward(self, x):
            seen.append(x.shape[0])
            ramp = torch.linspace(-4, 4, x.shape[2])[:, None, None] + torch.linspace(-4, 4, x.shape[4])
            z = ramp.expand(x.shape[2:])[None, None].repeat(x.shape[0], 1, 1, 1, 1)
            return torch.cat([-z, z], 1)

    image = torch.ones(1, 1, 16, 16, 16)
    mean, var = lesion_probability(Corner(), image, 3, [16, 16, 16], tta_axes=[0, 1, 2], skip_empty=False)
    assert len(seen) == 8 and var is not None
    # flipping axis 0 or 2 mirrors the ramp, so the 8-pass mean is symmetric along both
    assert torch.allclose(mean, torch.flip(mean, dims=[2]), atol=1e-6)
    assert torch.allclose(mean, torch.flip(mean, dims=[4]), atol=1e-6)
