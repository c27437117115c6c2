"""(Fashion-)MNIST held on the training device as uint8, batched and resized there.

    data = load_data(DataConfig(resize=96), torch.device("cpu"))
    for xb, yb in batches(data.train_x, data.train_y, 128, data.cfg, gen, train=True):
        ...  # xb: (128, 1, 96, 96) float in [0, 1]

Files are read from data.data_dir or $NIN_SEARCH_DATA when one is set, and only from there;
otherwise looked for in this order: Debian's dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist); ./data; torchvision's download into ./data when online.
The whole split moves to the device once; every batch is an on-device gather from a seeded
permutation, then F.interpolate: no PIL, no DataLoader workers.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nin_search.engine.config import ConfigError, DataConfig
from nin_search.engine.errors import first_line

NATIVE = 28  # (Fashion-)MNIST images are 28x28, one channel


SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


SYSTEM_DIRS = {  # Debian packages of the original IDX files
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}


TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}


CROP_PAD = 2  # pixels of zero padding for the random-crop augmentation, at native size


class DataError(ConfigError):
    """Missing, truncated or corrupt data, or a split that does not fit (exit code 2)."""


@dataclass
class Data:
    train_x: torch.Tensor  # (N, 28, 28) uint8 on the device
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    cfg: DataConfig
    source: str  # where the files came from
    num_classes: int = 10

    @property
    def input_size(self) -> int:
        return self.cfg.resize or self.train_x.shape[-1]


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (optionally gzipped) as a uint8 tensor; DataError names a bad file."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'IDX'}"
            f" ({e}); delete it or point data.data_dir elsewhere"
        ) from None
    dims, header = _idx_header(path, raw[:20], len(raw))
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def _idx_header(path: Path, head: bytes, size: int) -> tuple[list[int], int]:
    """(dims, header bytes) from an IDX file's first 20 bytes and its size, or DataError."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or not 1 <= head[3] <= 4:
        raise DataError(
            f"{path}: not an IDX file of uint8 (bad magic number {head[:4].hex()});"
            f" delete it or point data.data_dir elsewhere"
        )
    ndim = head[3]
    header = 4 + 4 * ndim
    if size < header:
        raise DataError(f"{path}: truncated inside its header ({size} bytes)")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    want = 1
    for d in dims:
        want *= d
    got = size - header
    if got != want:
        raise DataError(
            f"{path}: {'truncated' if got < want else 'corrupt'}: its header says "
            f"{'x'.join(map(str, dims))} = {want} bytes of data but it holds {got};"
            f" download it again or point data.data_dir elsewhere"
        )
    return dims, header


def idx_shape(path: Path) -> tuple[int, ...]:
    """An IDX file's shape, checked as read_idx checks it; a plain file is not read past its
    header (a .gz one is decompressed: its size is known no other way)."""
    if path.suffix == ".gz":
        return tuple(read_idx(path).shape)
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(
            f"{path}: cannot be read as IDX ({e}); delete it or point data.data_dir elsewhere"
        ) from None
    return tuple(_idx_header(path, head, size)[0])


def check_data(cfg: DataConfig, with_test: bool = False) -> None:
    """What load_data would refuse (files missing, truncated, corrupt or mismatched, a split
    that does not fit), found from the files' headers: sweep and ablate call it before any
    store is opened, as train and lr-finder load the data before they open one."""
    _, files = locate(cfg)
    for split in ("train", "test") if with_test else ("train",):
        img, lab = (files[n] for n in SPLITS[split])
        _check_pair(idx_shape(img), idx_shape(lab), img, lab)
    _check_split(idx_shape(files[SPLITS["train"][0]])[0], cfg)


def _check_pair(img: tuple, lab: tuple, img_path: Path, lab_path: Path) -> None:
    if len(img) != 3 or len(lab) != 1 or img[0] != lab[0]:
        raise DataError(f"{img_path}: {img} images do not match {lab} labels in {lab_path}")


def _files_in(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in folder (or its raw/ or <Name>/raw/), plain or .gz, else None."""
    for base in (folder, folder / "raw"):
        found = {}
        for name in (n for pair in SPLITS.values() for n in pair):
            for cand in (base / name, base / f"{name}.gz"):
                if cand.is_file():
                    found[name] = cand
                    break
        if len(found) == 4:
            return found
    return None


def _candidates(cfg: DataConfig) -> list[tuple[str, Path]]:
    return [
        (f"Debian package dataset-{cfg.dataset}", Path(SYSTEM_DIRS[cfg.dataset])),
        ("./data", Path("data")),
    ]


def locate(cfg: DataConfig) -> tuple[str, dict[str, Path]]:
    """(description, {file name: path}) for the first place that has all four files; a folder
    the user named (data.data_dir, $NIN_SEARCH_DATA) is the only place looked in."""
    given = cfg.data_dir or os.environ.get("NIN_SEARCH_DATA", "")
    if given:  # never another copy of the data than the one asked for
        label = "data.data_dir" if cfg.data_dir else "$NIN_SEARCH_DATA"
        for sub in (Path(given), Path(given) / TORCHVISION[cfg.dataset]):
            files = _files_in(sub)
            if files:
                return f"{label} ({sub})", files
        what = "has no complete set of IDX files" if Path(given).is_dir() else "is no folder"
        names = ", ".join(n for pair in SPLITS.values() for n in pair)
        raise DataError(
            f"{label} = {given!r} {what}: {cfg.dataset} needs {names} (plain or .gz) in it, "
            f"its raw/ or its {TORCHVISION[cfg.dataset]}/raw/"
        )
    tried = []
    for label, folder in _candidates(cfg):
        for sub in (folder, folder / TORCHVISION[cfg.dataset]):
            files = _files_in(sub)
            if files:
                return f"{label} ({sub})", files
        tried.append(f"{label}: {folder} has no complete set of IDX files")
    if os.environ.get("NIN_SEARCH_OFFLINE") != "1":
        try:
            import torchvision

            cls = getattr(torchvision.datasets, TORCHVISION[cfg.dataset])
            for train in (True, False):
                cls(root="data", train=train, download=True)
            files = _files_in(Path("data") / TORCHVISION[cfg.dataset])
            if files:
                return "torchvision download (./data)", files
            tried.append("torchvision download: finished but left no IDX files in ./data")
        except Exception as e:  # any network or disk failure: report it with the others
            tried.append(f"torchvision download into ./data failed: {first_line(e)}")
    else:
        tried.append("torchvision download: skipped (NIN_SEARCH_OFFLINE=1)")
    raise DataError(
        f"{cfg.dataset} not found; tried " + "; ".join(tried) + ". Fix: set data.data_dir or "
        f"NIN_SEARCH_DATA to a folder with the four IDX files, or `apt-get install "
        f"dataset-{cfg.dataset}`"
    )


def load_data(cfg: DataConfig, device: torch.device | str = "cpu", with_test: bool = True) -> Data:
    """Find, read, split and move the dataset to the device (once)."""
    where, files = locate(cfg)
    x, y = (read_idx(files[n]) for n in SPLITS["train"])
    tx, ty = (read_idx(files[n]) for n in SPLITS["test"]) if with_test else (None, None)
    for (img, lab), split in (((x, y), "train"), ((tx, ty), "test")):
        if img is not None:
            _check_pair(tuple(img.shape), tuple(lab.shape), *(files[n] for n in SPLITS[split]))
    return split_data(x, y, cfg, device, tx, ty, source=where)


def split_data(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DataConfig,
    device: torch.device | str,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    source: str = "tensors",
    num_classes: int = 10,
) -> Data:
    """Hold out data.val_size images by a permutation seeded with data.split_seed."""
    n = len(x)
    _check_split(n, cfg)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = perm[: cfg.val_size], perm[cfg.val_size :]
    if cfg.train_subset:
        train = train[: cfg.train_subset]

    def put(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=dtype)

    return Data(
        put(x[train], torch.uint8),
        put(y[train], torch.long),
        put(x[val], torch.uint8),
        put(y[val], torch.long),
        put(test_x, torch.uint8),
        put(test_y, torch.long),
        cfg,
        source,
        num_classes,
    )


def _check_split(n: int, cfg: DataConfig) -> None:
    if cfg.val_size >= n:
        raise DataError(f"data.val_size = {cfg.val_size}: must be below the {n} training images")
    left = n - cfg.val_size
    if cfg.train_subset > left:
        raise DataError(
            f"data.train_subset = {cfg.train_subset}: at most {left} images remain"
            f" after data.val_size = {cfg.val_size} (0 = all)"
        )


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop (CROP_PAD px), per image, on the device."""
    b, h, w = x.shape  # (B, 28, 28) uint8
    flip = torch.rand(b, device=x.device, generator=gen) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    padded = F.pad(x, (CROP_PAD,) * 4)
    dy, dx = torch.randint(0, 2 * CROP_PAD + 1, (2, b), device=x.device, generator=gen)
    rows = (torch.arange(h, device=x.device)[None] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None] + dx[:, None])[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols]


def to_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, 1, size, size) in [0, 1], like ToTensor after Resize, in
    channels_last strides: the engine's models are channels_last on every device."""
    x = x.unsqueeze(1).float().div_(255)
    if size and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def train_images(n: int, batch_size: int) -> int:
    """Images a training epoch over n images uses: all but a lone last one (see batches)."""
    return n - 1 if n % batch_size == 1 and n > 1 else n


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    cfg: DataConfig,
    gen: torch.Generator | None = None,
    train: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches: shuffled and augmented when train, in order otherwise.

    A training epoch drops a last batch of one image (another one each epoch): BatchNorm cannot
    normalise a single value per channel ("Expected more than 1 value per channel")."""
    order = (
        torch.randperm(len(x), device=x.device, generator=gen)
        if train
        else torch.arange(len(x), device=x.device)
    )
    if train:
        order = order[: train_images(len(order), batch_size)]
    for idx in order.split(batch_size):
        xb = x[idx]
        if train and cfg.augment:
            xb = augment(xb, gen)
        yield to_input(xb, cfg.resize), y[idx]
