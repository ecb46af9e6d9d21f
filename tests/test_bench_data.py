"""Study data sets, the .npy loaders on generated fixtures, task metrics on hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastmtl.bench.data import TaskSpec, load_dataset, make_multidigits, make_scenes
from fastmtl.bench.models import MultiTaskNet, count_parameters
from fastmtl.bench.tasks import (
    depth_metrics,
    normal_metrics,
    segmentation_metrics,
    task_loss,
    task_metrics,
)

# ---- multidigits --------------------------------------------------------------------------


def test_multidigits_shapes_labels_and_determinism():
    a = make_multidigits(40, 20, seed=3)
    b = make_multidigits(40, 20, seed=3)
    c = make_multidigits(40, 20, seed=4)
    assert a.x_train.shape == (40, 1, 10, 20) and a.x_test.shape == (20, 1, 10, 20)
    assert [t.name for t in a.tasks] == ["left", "right", "parity"]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test[1], b.y_test[1])
    assert not torch.equal(a.x_train, c.x_train)
    for y in a.y_train[:2]:
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert torch.equal(a.y_train[2], (a.y_train[0] + a.y_train[1]) % 2)
    two = make_multidigits(8, 4, seed=0, parity=False, scale=2)
    assert len(two.tasks) == 2 and two.x_train.shape == (8, 1, 18, 36)


def test_multidigits_left_half_shows_the_left_digit():
    from sklearn.datasets import load_digits

    d = make_multidigits(30, 5, seed=0, noise=0.0)
    scans = load_digits()
    # With no noise every canvas's left half holds one scan of the labelled class exactly.
    for i in range(30):
        half = d.x_train[i, 0, :, :10].numpy()
        label = int(d.y_train[0][i])
        found = False
        for r in range(3):
            for c in range(3):
                crop = half[r:r + 8, c:c + 8]
                cand = scans.images[scans.target == label] / 16.0
                if np.any(np.all(np.isclose(cand, crop, atol=1e-6), axis=(1, 2))):
                    found = True
        assert found, i


def test_multidigits_bad_arguments():
    with pytest.raises(ValueError, match="n_train"):
        make_multidigits(0, 5)
    with pytest.raises(ValueError, match="scale"):
        make_multidigits(5, 5, scale=0)


# ---- scenes -------------------------------------------------------------------------------


def test_scenes_shapes_ranges_and_determinism():
    a = make_scenes(6, 3, seed=1)
    b = make_scenes(6, 3, seed=1)
    assert a.x_train.shape == (6, 3, 64, 64)
    seg, depth, normal = a.y_train
    assert seg.shape == (6, 64, 64) and depth.shape == (6, 1, 64, 64)
    assert normal.shape == (6, 3, 64, 64)
    assert [t.kind for t in a.tasks] == ["segmentation", "depth", "normal"]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test[2], b.y_test[2])
    assert not torch.equal(make_scenes(6, 3, seed=2).x_train, a.x_train)
    assert seg.min() >= 0 and seg.max() < a.tasks[0].channels and seg.max() > 0
    assert (depth > 0).all()
    torch.testing.assert_close(normal.norm(dim=1), torch.ones(6, 64, 64), atol=1e-5, rtol=0)
    assert (normal[:, 2] > 0).all()  # every visible surface faces the camera
    assert torch.isfinite(a.x_train).all()


def test_scenes_objects_are_in_front_of_the_background():
    s = make_scenes(20, 1, seed=0)
    seg, depth = s.y_train[0], s.y_train[1][:, 0]
    for i in range(20):  # the z-buffer keeps the nearest surface: objects are nearer
        if (seg[i] > 0).any():
            assert depth[i][seg[i] > 0].mean() < depth[i][seg[i] == 0].mean()
    spheres = seg == 3
    if spheres.any():  # sphere normals vary; planar normals are constant per object
        assert s.y_train[2].permute(0, 2, 3, 1)[spheres].std(0).max() > 0.05


# ---- .npy loaders -------------------------------------------------------------------------


def _write_npy_benchmark(root, name, n_train=3, n_val=2, hw=(12, 16)):
    rng = np.random.default_rng(0)
    folders = ["image", "label", "depth"] + (["normal"] if name == "nyuv2" else [])
    if name == "cityscapes":
        folders[1] = "label_7"
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for f in folders:
            (root / split / f).mkdir(parents=True)
        for i in range(n):
            img = rng.random((*hw, 3), dtype=np.float32)
            lab = rng.integers(-1, 7, size=hw).astype(np.float32)
            dep = rng.random((*hw, 1), dtype=np.float32)
            np.save(root / split / "image" / f"{i}.npy", img)
            np.save(root / split / folders[1] / f"{i}.npy", lab)
            np.save(root / split / "depth" / f"{i}.npy", dep)
            if name == "nyuv2":
                nor = rng.standard_normal((*hw, 3)).astype(np.float32)
                np.save(root / split / "normal" / f"{i}.npy", nor)
            arrays[(split, i)] = (img, lab, dep)
    return arrays


def test_nyuv2_loader_reads_the_mtan_layout(tmp_path):
    arrays = _write_npy_benchmark(tmp_path, "nyuv2")
    d = load_dataset("nyuv2", root=str(tmp_path))
    assert d.x_train.shape == (3, 3, 12, 16) and d.x_test.shape == (2, 3, 12, 16)
    assert [t.name for t in d.tasks] == ["segmentation", "depth", "normal"]
    img, lab, dep = arrays[("val", 1)]
    np.testing.assert_array_equal(d.x_test[1].numpy(), np.moveaxis(img, -1, 0))
    np.testing.assert_array_equal(d.y_test[0][1].numpy(), lab.astype(np.int64))
    np.testing.assert_array_equal(d.y_test[1][1, 0].numpy(), dep[..., 0])
    assert d.y_train[2].shape == (3, 3, 12, 16)
    assert (d.y_train[0] == -1).any()  # unlabelled pixels are kept as -1
    capped = load_dataset("nyuv2", root=str(tmp_path), n_train=2, n_test=1)
    assert len(capped.x_train) == 2 and len(capped.x_test) == 1


def test_cityscapes_loader_accepts_label_7(tmp_path):
    _write_npy_benchmark(tmp_path, "cityscapes")
    d = load_dataset("cityscapes", root=str(tmp_path))
    assert [t.kind for t in d.tasks] == ["segmentation", "depth"]
    assert d.tasks[0].channels == 7 and d.y_train[1].shape == (3, 1, 12, 16)


def test_npy_loader_errors_name_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image/<i>\.npy"):
        load_dataset("nyuv2", root=str(tmp_path))
    with pytest.raises(ValueError, match="--root"):
        load_dataset("nyuv2", root=None)
    _write_npy_benchmark(tmp_path, "nyuv2")
    (tmp_path / "val" / "depth" / "1.npy").unlink()
    with pytest.raises(FileNotFoundError, match="1.npy"):
        load_dataset("nyuv2", root=str(tmp_path))
    np.save(tmp_path / "val" / "depth" / "1.npy", np.zeros((5, 5, 1), np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_dataset("nyuv2", root=str(tmp_path))
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("imagenet")


# ---- task metrics -------------------------------------------------------------------------


def test_segmentation_metrics_hand_case():
    target = torch.tensor([[0, 0, 1, 1, -1]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float()  # [N, C, L]
    m = segmentation_metrics(logits, target, 3)
    # class 0: I = 1, U = 2; class 1: I = 2, U = 3; class 2 absent from both: left out.
    assert math.isclose(m["miou"], (1 / 2 + 2 / 3) / 2)
    assert math.isclose(m["pixel_acc"], 3 / 4)


def test_depth_metrics_skip_missing_depth():
    m = depth_metrics(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 0.0]))
    assert math.isclose(m["abs_err"], 0.5) and math.isclose(m["rel_err"], 0.25)
    assert all(math.isnan(v) for v in depth_metrics(torch.ones(2), torch.zeros(2)).values())


def test_normal_metrics_hand_angles():
    deg = torch.tensor([0.0, 45.0, 90.0, 10.0])
    rad = torch.deg2rad(deg)
    target = torch.zeros(1, 3, 1, 5)
    target[0, 2, 0, :4] = 1.0  # the fifth pixel has no normal: excluded
    pred = torch.zeros(1, 3, 1, 5)
    pred[0, 0, 0, :4] = 2.0 * torch.sin(rad)  # unnormalised predictions are fine
    pred[0, 2, 0, :4] = 2.0 * torch.cos(rad)
    pred[0, 0, 0, 4] = 1.0
    m = normal_metrics(pred, target)
    assert math.isclose(m["angle_mean"], 36.25, abs_tol=1e-6)
    assert math.isclose(m["angle_median"], 27.5, abs_tol=1e-6)
    assert m["within_11.25"] == 0.5 and m["within_22.5"] == 0.5 and m["within_30"] == 0.5


def test_task_metrics_and_losses():
    task = TaskSpec("c", "classification", 3)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    assert task_metrics(task, logits, torch.tensor([0, 1, 0]))["accuracy"] == pytest.approx(2 / 3)
    n = torch.nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)
    assert task_loss(TaskSpec("n", "normal", 3), n, n).item() == pytest.approx(0.0, abs=1e-6)
    d = torch.tensor([[[[1.0, 5.0]]]])
    t = torch.tensor([[[[2.0, 0.0]]]])  # the missing pixel does not count
    assert task_loss(TaskSpec("d", "depth", 1), d, t).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kind"):
        task_metrics(TaskSpec("x", "pose", 1), d, t)


# ---- models -------------------------------------------------------------------------------


def test_resnet18_width_64_is_torchvisions_network():
    from torchvision.models import resnet18

    tasks = [TaskSpec("a", "classification", 10)]
    net = MultiTaskNet("resnet18", tasks, 3, width=64)
    tv = resnet18(weights=None)
    # Same stages; the stem is a 3x3 convolution instead of 7x7, and there is no fc.
    expected = count_parameters(tv) - count_parameters(tv.fc) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3
    assert count_parameters(net.encoder) == expected


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet"])
def test_backbones_with_dense_and_classification_heads(backbone):
    dense = [TaskSpec("s", "segmentation", 4), TaskSpec("d", "depth", 1)]
    net = MultiTaskNet(backbone, dense, 3, width=8, stem_stride=2, hidden=8)
    seg, dep = net(torch.randn(2, 3, 32, 32))
    assert seg.shape == (2, 4, 32, 32) and dep.shape == (2, 1, 32, 32) and (dep > 0).all()
    cls = MultiTaskNet(backbone, [TaskSpec("c", "classification", 5)], 1, width=8)
    assert cls(torch.randn(2, 1, 10, 20))[0].shape == (2, 5)
    with pytest.raises(ValueError, match="backbone"):
        MultiTaskNet("vgg", dense, 3)
