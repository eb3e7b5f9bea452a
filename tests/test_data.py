import gzip
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from mfvc_gpu.data import fetch, load_dataset, search_dirs, to_images, verify_dataset
from mfvc_gpu.data.readers import parse_idx, read_idx_pair
from mfvc_gpu.data.registry import REGISTRY
from mfvc_gpu.errors import MFVCError


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(gzip.compress(idx_bytes(arr)))


def test_parse_idx_round_trip():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(arr)), arr)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:-5], "truncated or corrupt"),
        (lambda b: b + b"\x00", "truncated or corrupt"),
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX type"),
    ],
)
def test_parse_idx_rejects_damaged_files(mangle, message):
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    with pytest.raises(MFVCError, match=message):
        parse_idx(mangle(good), "f.idx")


def test_idx_pair_checks_counts_and_transposes(tmp_path):
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    write_idx(tmp_path / "i.gz", img)
    write_idx(tmp_path / "l.gz", np.array([1, 2, 3], dtype=np.uint8))
    with pytest.raises(MFVCError, match="2 images but .* 3 labels"):
        read_idx_pair(tmp_path / "i.gz", tmp_path / "l.gz")
    write_idx(tmp_path / "l.gz", np.array([1, 2], dtype=np.uint8))
    x, _ = read_idx_pair(tmp_path / "i.gz", tmp_path / "l.gz", transpose=True)
    np.testing.assert_array_equal(x[1], img[1].T)


def test_mnist_test_split(mnist_dir):
    ds = load_dataset("mnist-test", data_dir=mnist_dir)
    assert ds.images.shape == (10000, 1, 32, 32) and ds.images.dtype == np.uint8  # 1 byte a pixel
    assert (ds.images.min(), ds.images.max()) == (0, 255)
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # resizing keeps the mean intensity close to MNIST's well-known 0.1325 (test split)
    assert abs(ds.images.mean() / 255 - 0.1325) < 0.01


def test_mnist_all_is_70k_and_train_split(mnist_dir):
    ds = load_dataset("mnist", data_dir=mnist_dir)
    assert len(ds) == 70000 and ds.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert len(load_dataset("mnist", split="train", data_dir=mnist_dir)) == 60000


def test_fashion_mnist_test(fashion_dir):
    ds = load_dataset("fashion-mnist-test")
    assert ds.images.shape == (10000, 1, 32, 32)
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    assert verify_dataset("fashion-mnist") == []


def test_checksum_mismatch_is_reported(tmp_path, mnist_dir):
    for f in mnist_dir.glob("t10k-*.gz"):
        shutil.copy(f, tmp_path / f.name)
    assert verify_dataset("mnist-test", tmp_path) == []
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    assert len(verify_dataset("mnist-test", tmp_path)) == 1
    with pytest.raises(MFVCError, match="does not match the published checksum"):
        load_dataset("mnist-test", data_dir=tmp_path)
    assert len(load_dataset("mnist-test", data_dir=tmp_path, verify=False)) == 10000


def test_emnist_images_are_transposed(tmp_path):
    img = np.zeros((2, 28, 28), dtype=np.uint8)
    img[:, 0, 5] = 255  # a mark in row 0 becomes a mark in column 0
    for split in ("train", "test"):
        write_idx(tmp_path / f"emnist-digits-{split}-images-idx3-ubyte.gz", img)
        write_idx(tmp_path / f"emnist-digits-{split}-labels-idx1-ubyte.gz", np.array([3, 4], dtype=np.uint8))
    ds = load_dataset("emnist-digits", data_dir=tmp_path)
    assert len(ds) == 4 and ds.n_classes == 10
    column0 = ds.images[0, 0, :, :2].mean()
    row0 = ds.images[0, 0, :2, :].mean()
    assert column0 > row0
    assert REGISTRY["emnist-balanced"].n_classes == 47


def test_usps_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "usps.h5", "w") as f:
        for part, n in (("train", 7), ("test", 3)):
            g = f.create_group(part)
            g["data"] = rng.random((n, 256))
            g["target"] = rng.integers(0, 10, n)
    ds = load_dataset("usps", data_dir=tmp_path)
    assert ds.images.shape == (10, 1, 32, 32)
    assert len(load_dataset("usps", split="test", data_dir=tmp_path)) == 3


def test_user_npz_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ok.npz", images=rng.integers(0, 256, (5, 20, 20), dtype=np.uint8), labels=np.arange(5))
    ds = load_dataset(str(tmp_path / "ok.npz"))
    assert ds.images.shape == (5, 1, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3, 4]
    np.savez(tmp_path / "nolabel.npz", pictures=np.zeros((2, 4, 4)))
    with pytest.raises(MFVCError, match="no array named 'images'"):
        load_dataset(str(tmp_path / "nolabel.npz"))
    bad = np.zeros((3, 8, 8), dtype=np.float32)
    bad[1, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", images=bad)
    with pytest.raises(MFVCError, match="NaN or infinite"):
        load_dataset(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "badlab.npz", images=np.zeros((3, 8, 8)), labels=np.arange(4))
    with pytest.raises(MFVCError, match="expected \\(3,\\)"):
        load_dataset(str(tmp_path / "badlab.npz"))


def test_image_folder_with_classes(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 30), ("dogs", 220)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.n_classes == 2
    assert ds.images.dtype == np.uint8 and (ds.images[3] == 220).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MFVCError, match="holds no images"):
        load_dataset(str(tmp_path / "empty"))


def test_pixel_scaling_is_explicit():
    u8 = np.full((2, 8, 8), 255, dtype=np.uint8)
    out = to_images(u8)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 32, 32) and out.max() == 255
    assert to_images(np.full((2, 8, 8), 0.5)).max() == 128  # floats in [0, 1]: 0.5 is mid-grey
    assert to_images(np.full((2, 8, 8), 65535, dtype=np.uint16)).max() == 255  # 16-bit white
    digits_like = np.full((2, 8, 8), 8.0)  # scikit-learn's digits: white is 16
    with pytest.raises(MFVCError, match=r"span \[8, 8\], not \[0, 1\].*--pixel-max"):
        to_images(digits_like)
    assert to_images(digits_like, pixel_max=16).max() == 128
    with pytest.raises(MFVCError, match=r"float pixel values span \[0, 1.5\]"):
        to_images(np.linspace(0, 1.5, 128).reshape(2, 8, 8))  # no silent division by 255
    with pytest.raises(MFVCError, match="int64.*no known white"):
        to_images(np.full((2, 8, 8), 3, dtype=np.int64))
    with pytest.raises(MFVCError, match=r"outside \[0, 16\]"):
        to_images(np.full((2, 8, 8), 17.0), pixel_max=16)
    with pytest.raises(MFVCError, match="NaN or infinite"):
        to_images(np.full((2, 8, 8), np.nan))
    with pytest.raises(MFVCError, match="non-empty stack"):
        to_images(np.zeros((0, 8, 8)))


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MFVC_DATA_DIR", raising=False)
    with pytest.raises(MFVCError, match="mfvc-gpu datasets fetch mnist") as e:
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)
    with pytest.raises(MFVCError, match="unknown data set 'nosuch'"):
        load_dataset("nosuch")
    with pytest.raises(MFVCError, match="has no split 'test'"):
        load_dataset("digits", split="test")


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MFVC_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dirs = [str(p) for p in search_dirs(REGISTRY["mnist"], tmp_path / "explicit")]
    assert dirs == [
        str(tmp_path / "explicit" / "mnist"),
        str(tmp_path / "explicit"),
        str(tmp_path / "env" / "mnist"),
        str(tmp_path / "env"),
        str(tmp_path / "cache" / "mfvc_gpu" / "mnist"),
        "/usr/share/datasets/mnist",
    ]


@pytest.fixture
def mirror(mnist_dir, tmp_path):
    """A local HTTP server on 127.0.0.1 serving a folder that holds the MNIST test files."""
    served = tmp_path / "served"
    served.mkdir()
    for f in mnist_dir.glob("*.gz"):
        (served / f.name).symlink_to(f)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_fetch_from_local_mirror(mirror, tmp_path):
    served, url = mirror
    dest = fetch("mnist", tmp_path / "dl", mirror=url, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in served.iterdir())
    assert verify_dataset("mnist", dest) == []
    assert len(load_dataset("mnist-test", data_dir=dest)) == 10000


def test_fetch_rejects_bad_checksum_and_leaves_nothing(mirror, tmp_path):
    served, url = mirror
    target = served / "t10k-labels-idx1-ubyte.gz"
    target.unlink()
    target.write_bytes(b"not the real file")
    with pytest.raises(MFVCError, match="t10k-labels-idx1-ubyte.gz"):
        fetch("mnist-test", tmp_path / "dl", mirror=url, progress=False)
    assert not (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob(".*part"))


def test_flat_data_dir_is_not_mistaken_for_another_set(mnist_dir):
    """MNIST and Fashion-MNIST share file names: a flat folder of MNIST files is not Fashion-MNIST."""
    from mfvc_gpu.data import locate

    assert locate(REGISTRY["mnist-test"], "test", mnist_dir) is not None
    found = locate(REGISTRY["fashion-mnist-test"], "test", mnist_dir)
    assert found is None or mnist_dir not in [p.parent for p in found]
