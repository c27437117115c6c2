"""Data: IDX files found and read, a seeded held-out split, on-device batches and augmentation.

Every test reads tiny IDX files written into tmp_path (conftest.make_idx_dir): training image i
is filled with the value i % 256 and labelled i % 10.
"""

from __future__ import annotations

import gzip

import pytest
import torch

from nin_search.engine.config import DataConfig
from nin_search.engine.data import (
    CROP_PAD,
    DataError,
    augment,
    batches,
    load_data,
    read_idx,
    split_data,
)

N_TRAIN, N_TEST = 60, 20


def load(folder, **data) -> object:
    return load_data(DataConfig(data_dir=str(folder), **({"val_size": 10} | data)), "cpu")


def row_ids(images: torch.Tensor) -> list[int]:
    """The training-file row each image came from (its fill value)."""
    return images[:, 0, 0].tolist()


# ---- reading files ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_files_are_read_with_their_shapes(tmp_path, make_idx_dir, gz):
    data = load(make_idx_dir(tmp_path, N_TRAIN, N_TEST, gz=gz))
    # train + val hold every training image, 28x28 uint8; the test split is whole
    assert len(data.train_x) + len(data.val_x) == N_TRAIN
    assert tuple(data.train_x.shape[1:]) == (28, 28)
    assert (data.train_x.dtype, data.train_y.dtype) == (torch.uint8, torch.int64)
    assert tuple(data.test_x.shape) == (N_TEST, 28, 28)


def test_labels_stay_with_their_images(tmp_path, make_idx_dir):
    data = load(make_idx_dir(tmp_path))
    # image i (filled with i) keeps label i % 10 after the shuffled split
    assert [i % 10 for i in row_ids(data.train_x)] == data.train_y.tolist()


def test_read_idx_decodes_big_endian_header(tmp_path, idx_writer):
    t = torch.arange(2 * 3 * 300).reshape(2, 3, 300).remainder(256).to(torch.uint8)
    # dims above 255 need more than the low header byte; the data comes back unchanged
    assert torch.equal(read_idx(idx_writer(tmp_path / "x-idx3-ubyte", t)), t)


def test_truncated_file_names_its_path(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "train-images-idx3-ubyte", torch.zeros(4, 28, 28))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError) as e:
        read_idx(path)
    # the message names the file and says it is truncated
    assert str(path) in str(e.value) and "truncated" in str(e.value)


def test_file_truncated_in_its_header_names_its_path(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError) as e:
        read_idx(path)
    # a header cut short is reported with the file's path
    assert str(path) in str(e.value)


def test_extra_bytes_are_reported_as_corrupt(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "train-images-idx3-ubyte", torch.zeros(4, 28, 28))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError) as e:
        read_idx(path)
    # more data than the header promises is an error too, naming the file
    assert str(path) in str(e.value) and "corrupt" in str(e.value)


@pytest.mark.parametrize("broken", ["not gzip", "cut short"])
def test_corrupt_gzip_names_its_path(tmp_path, idx_writer, broken):
    path = idx_writer(tmp_path / "train-images-idx3-ubyte.gz", torch.zeros(4, 28, 28))
    raw = path.read_bytes()
    path.write_bytes(b"this is not gzip data" if broken == "not gzip" else raw[: len(raw) // 2])
    with pytest.raises(DataError) as e:
        read_idx(path)
    # the message names the file and says it cannot be read as gzip
    assert str(path) in str(e.value) and "gzip" in str(e.value)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x00\x08",
        b"\x00\x00\x0d\x03" + bytes(100),
        b"\x12\x34\x08\x03" + bytes(100),
        b"\x00\x00\x08\x00" + bytes(100),
    ],
    ids=["too short", "float data", "garbage", "no dims"],
)
def test_bad_magic_names_its_path(tmp_path, content):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_idx(path)
    # a wrong magic number is reported as such, naming the file
    assert str(path) in str(e.value) and "magic" in str(e.value)


def test_gzipped_bad_magic_names_its_path(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x09" + bytes(10)))
    with pytest.raises(DataError) as e:
        read_idx(path)
    # a valid gzip holding something else is still reported with the file's path
    assert str(path) in str(e.value) and "magic" in str(e.value)


def test_image_label_count_mismatch_names_both_files(tmp_path, make_idx_dir, idx_writer):
    folder = make_idx_dir(tmp_path)
    labels = idx_writer(folder / "train-labels-idx1-ubyte", torch.zeros(N_TRAIN - 1))
    with pytest.raises(DataError) as e:
        load(folder)
    # 60 images against 59 labels: both files are named
    assert str(labels) in str(e.value) and str(folder / "train-images-idx3-ubyte") in str(e.value)


# ---- finding files ---------------------------------------------------------------------------


def test_missing_everywhere_lists_every_place_and_the_fixes(offline_nowhere):
    with pytest.raises(DataError) as e:
        load_data(DataConfig(), "cpu")
    message = str(e.value)
    # every place tried is listed: Debian's package, ./data, the (skipped) download
    assert "Debian package dataset-fashion-mnist" in message and "./data" in message
    assert "torchvision download: skipped" in message
    # and the fixes: data.data_dir, NIN_SEARCH_DATA, apt-get
    assert all(fix in message for fix in ("data.data_dir", "NIN_SEARCH_DATA", "apt-get install"))


@pytest.mark.parametrize("where", ["data.data_dir", "$NIN_SEARCH_DATA"])
@pytest.mark.parametrize("made", [True, False], ids=["empty", "missing"])
def test_a_named_folder_without_the_files_is_an_error_not_another_copy(
    offline_nowhere, make_idx_dir, monkeypatch, where: str, made: bool
):
    import nin_search.engine.data as d

    # another copy is there (Debian's package dir and ./data): it must not be used instead
    monkeypatch.setitem(d.SYSTEM_DIRS, "fashion-mnist", str(make_idx_dir(offline_nowhere / "s")))
    make_idx_dir(offline_nowhere / "data")
    named = offline_nowhere / "named"
    if made:
        named.mkdir()
    if where == "$NIN_SEARCH_DATA":
        monkeypatch.setenv("NIN_SEARCH_DATA", str(named))
    cfg = DataConfig(data_dir=str(named) if where == "data.data_dir" else "", val_size=10)
    with pytest.raises(DataError) as e:
        load_data(cfg, "cpu")
    # the error names the setting and the folder, and says what is missing
    assert str(e.value).startswith(f"{where} = {str(named)!r} ")
    assert ("has no complete set" if made else "is no folder") in str(e.value)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_nin_search_data_env_is_honoured(offline_nowhere, make_idx_dir, monkeypatch):
    folder = make_idx_dir(offline_nowhere / "elsewhere")
    monkeypatch.setenv("NIN_SEARCH_DATA", str(folder))
    data = load_data(DataConfig(val_size=10), "cpu")
    # with data.data_dir unset the files come from $NIN_SEARCH_DATA
    assert "$NIN_SEARCH_DATA" in data.source and len(data.train_x) == N_TRAIN - 10


def test_data_dir_wins_over_env(offline_nowhere, make_idx_dir, monkeypatch):
    monkeypatch.setenv("NIN_SEARCH_DATA", str(make_idx_dir(offline_nowhere / "env", 30)))
    data = load(make_idx_dir(offline_nowhere / "cfg", 50))
    # data.data_dir is used when both are set
    assert "data.data_dir" in data.source and len(data.train_x) + len(data.val_x) == 50


def test_debian_package_dir_is_found(offline_nowhere, make_idx_dir, monkeypatch):
    import nin_search.engine.data as d

    folder = make_idx_dir(offline_nowhere / "usr-share", gz=True)
    monkeypatch.setitem(d.SYSTEM_DIRS, "fashion-mnist", str(folder))
    data = load_data(DataConfig(val_size=10), "cpu")
    # with nothing configured, Debian's dataset-fashion-mnist folder is used
    assert data.source.startswith("Debian package")


def test_local_data_dir_in_torchvision_layout_is_found(offline_nowhere, make_idx_dir):
    make_idx_dir(offline_nowhere / "data" / "FashionMNIST" / "raw")
    data = load_data(DataConfig(val_size=10), "cpu")
    # ./data/FashionMNIST/raw, where torchvision downloads, is found
    assert "./data" in data.source and len(data.test_x) == N_TEST


# ---- the held-out split ----------------------------------------------------------------------


def test_split_is_deterministic(tmp_path, make_idx_dir):
    folder = make_idx_dir(tmp_path)
    a, b = load(folder), load(folder)
    # the same split_seed holds out the same images
    assert row_ids(a.val_x) == row_ids(b.val_x) and row_ids(a.train_x) == row_ids(b.train_x)


def test_split_seed_changes_the_split(tmp_path, make_idx_dir):
    folder = make_idx_dir(tmp_path)
    # another split_seed holds out other images
    assert row_ids(load(folder).val_x) != row_ids(load(folder, split_seed=1).val_x)


def test_split_is_disjoint_and_complete(tmp_path, make_idx_dir):
    data = load(make_idx_dir(tmp_path))
    train, val = row_ids(data.train_x), row_ids(data.val_x)
    # no image is in both splits, and together they hold every training image once
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(N_TRAIN))


@pytest.mark.parametrize("val_size", [0, 1, 25, N_TRAIN - 1])
def test_val_size_is_honoured(tmp_path, make_idx_dir, val_size):
    data = load(make_idx_dir(tmp_path), val_size=val_size)
    # exactly val_size images are held out, the rest train
    assert (len(data.val_x), len(data.train_x)) == (val_size, N_TRAIN - val_size)


def test_train_subset_is_honoured_and_keeps_val(tmp_path, make_idx_dir):
    folder = make_idx_dir(tmp_path)
    full, sub = load(folder), load(folder, train_subset=7)
    # 7 training images, drawn from the same training side of the same split
    assert len(sub.train_x) == 7 and set(row_ids(sub.train_x)) <= set(row_ids(full.train_x))
    # and the validation split does not move
    assert row_ids(sub.val_x) == row_ids(full.val_x)


@pytest.mark.parametrize("val_size", [N_TRAIN, N_TRAIN + 1])
def test_val_size_too_big_names_the_key(tmp_path, make_idx_dir, val_size):
    with pytest.raises(DataError) as e:
        load(make_idx_dir(tmp_path), val_size=val_size)
    # the key and the number of images are named
    assert "data.val_size" in str(e.value) and str(N_TRAIN) in str(e.value)


def test_train_subset_too_big_names_the_key(tmp_path, make_idx_dir):
    with pytest.raises(DataError) as e:
        load(make_idx_dir(tmp_path), train_subset=N_TRAIN - 10 + 1)
    # the key and how many images remain are named
    assert "data.train_subset" in str(e.value) and str(N_TRAIN - 10) in str(e.value)


# ---- batches ---------------------------------------------------------------------------------


def tensors(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 28x28 uint8 images with the labels 0..n-1 (a label tells the image)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n)


@pytest.mark.parametrize("resize", [0, 28, 40, 96])
def test_batches_have_the_input_shape(resize):
    x, y = tensors()
    shapes = [tuple(xb.shape) for xb, _ in batches(x, y, 16, DataConfig(resize=resize))]
    side = resize or 28
    # batches of 16 then the remainder, one channel, resize x resize (0 keeps 28)
    assert shapes == [(16, 1, side, side)] * 3 + [(2, 1, side, side)]


@pytest.mark.parametrize("resize", [0, 96])
def test_batch_values_are_in_unit_range(resize):
    x, y = tensors()
    x[0] = 255  # a white image and a black one hit both ends of the range
    x[1] = 0
    xb = next(batches(x, y, 50, DataConfig(resize=resize)))[0]
    # uint8 0..255 becomes float 0..1, and the extremes are reached
    assert (xb.dtype, xb.min().item(), xb.max().item()) == (torch.float32, 0.0, 1.0)


def test_native_batches_are_pixels_over_255():
    x, y = tensors()
    xb = next(batches(x, y, 50, DataConfig(resize=0)))[0]
    # without resizing an input is its pixel value / 255
    assert torch.equal(xb[:, 0], x.float() / 255)


def test_train_order_is_a_permutation():
    x, y = tensors()
    gen = torch.Generator().manual_seed(0)
    order = torch.cat([yb for _, yb in batches(x, y, 16, DataConfig(resize=0), gen, train=True)])
    # every image once, shuffled
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))


def test_train_batches_keep_images_with_labels():
    x, y = tensors()
    gen = torch.Generator().manual_seed(0)
    for xb, yb in batches(x, y, 16, DataConfig(resize=0), gen, train=True):
        # each shuffled input is still the image of its label
        assert torch.equal(xb[:, 0], x[yb].float() / 255)


def test_train_order_depends_only_on_the_seed():
    x, y = tensors()

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in batches(x, y, 16, DataConfig(), gen, True)]).tolist()

    # the same seed shuffles the same way, another seed another way
    assert order(3) == order(3) and order(3) != order(4)


def test_eval_order_is_sequential():
    x, y = tensors()
    order = torch.cat([yb for _, yb in batches(x, y, 16, DataConfig(resize=0))])
    # evaluation batches come in file order
    assert order.tolist() == list(range(50))


# ---- augmentation ----------------------------------------------------------------------------


def test_augment_keeps_the_shape():
    x, _ = tensors(8)
    out = augment(x, torch.Generator().manual_seed(0))
    # same number of 28x28 uint8 images
    assert (out.shape, out.dtype) == (x.shape, x.dtype)


def test_augment_is_deterministic_for_a_seed():
    x, _ = tensors(8)
    a = augment(x, torch.Generator().manual_seed(0))
    # the same generator seed gives the same flips and crops
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(0)))


def test_augmented_train_batch_differs_but_keeps_labels():
    x, y = tensors(32)
    plain = DataConfig(resize=0, augment=False)
    aug = DataConfig(resize=0, augment=True)
    ((xa, ya),) = batches(x, y, 32, aug, torch.Generator().manual_seed(0), train=True)
    ((xp, yp),) = batches(x, y, 32, plain, torch.Generator().manual_seed(0), train=True)
    # same shuffle, same labels
    assert torch.equal(ya, yp)
    # but the images are flipped and shifted
    assert not torch.equal(xa, xp)


def test_eval_batches_are_never_augmented():
    x, y = tensors(32)
    ((xb, _),) = batches(x, y, 32, DataConfig(resize=0, augment=True))
    # evaluation sees the images as they are
    assert torch.equal(xb[:, 0], x.float() / 255)


def test_augment_is_a_flip_and_a_shift_within_crop_pad():
    x, _ = tensors(16)
    out = augment(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4)
    for img, pad in zip(out, padded, strict=True):
        candidates = [
            p[dy : dy + 28, dx : dx + 28]
            for p in (pad, pad.flip(-1))
            for dy in range(2 * CROP_PAD + 1)
            for dx in range(2 * CROP_PAD + 1)
        ]
        # each output is its image, maybe mirrored, shifted by at most CROP_PAD with zero fill
        assert any(torch.equal(img, c) for c in candidates)


def test_split_data_moves_to_the_device_as_uint8_and_long():
    x, y = tensors()
    data = split_data(x, y.to(torch.uint8), DataConfig(val_size=5), "cpu")
    # images stay uint8 (4x less memory), labels become int64 for cross_entropy
    assert (data.train_x.dtype, data.train_y.dtype, data.val_y.dtype) == (
        torch.uint8,
        torch.int64,
        torch.int64,
    )
    # input_size with resize 224 (the default) is 224
    assert data.input_size == 224
