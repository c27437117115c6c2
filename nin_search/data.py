"""(Fashion-)MNIST held on the training device as uint8, batched and resized there.

    data = load_data(DataConfig(resize=96), torch.device("cpu"))
    for xb, yb in batches(data.train_x, data.train_y, 128, data.cfg, gen, train=True):
        ...  # xb: (128, 1, 96, 96) float in [0, 1]

Files are looked for in this order: data.data_dir or $NIN_SEARCH_DATA; Debian's
dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); ./data; torchvision's download into
./data when online. The whole split moves to the device once; every batch is an on-device gather
from a seeded permutation, then F.interpolate: no PIL, no DataLoader workers.
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

from nin_search.config import ConfigError, DataConfig

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
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(
            f"{path}: not an IDX file of uint8 (bad magic number {raw[:4].hex()});"
            f" delete it or point data.data_dir elsewhere"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside its header ({len(raw)} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    want = 1
    for d in dims:
        want *= d
    got = len(raw) - header
    if got != want:
        raise DataError(
            f"{path}: {'truncated' if got < want else 'corrupt'}: its header says "
            f"{'x'.join(map(str, dims))} = {want} bytes of data but it holds {got};"
            f" download it again or point data.data_dir elsewhere"
        )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


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
    out = []
    given = cfg.data_dir or os.environ.get("NIN_SEARCH_DATA", "")
    if given:
        out.append(("data.data_dir" if cfg.data_dir else "$NIN_SEARCH_DATA", Path(given)))
    out.append((f"Debian package dataset-{cfg.dataset}", Path(SYSTEM_DIRS[cfg.dataset])))
    out.append(("./data", Path("data")))
    return out


def locate(cfg: DataConfig) -> tuple[str, dict[str, Path]]:
    """(description, {file name: path}) for the first place that has all four files."""
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
            tried.append(f"torchvision download into ./data failed: {str(e).splitlines()[0]}")
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
        if img is not None and (img.ndim != 3 or lab.ndim != 1 or len(img) != len(lab)):
            raise DataError(
                f"{files[SPLITS[split][0]]}: {tuple(img.shape)} images do not match "
                f"{tuple(lab.shape)} labels in {files[SPLITS[split][1]]}"
            )
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
    if cfg.val_size >= n:
        raise DataError(f"data.val_size = {cfg.val_size}: must be below the {n} training images")
    left = n - cfg.val_size
    if cfg.train_subset > left:
        raise DataError(
            f"data.train_subset = {cfg.train_subset}: at most {left} images remain"
            f" after data.val_size = {cfg.val_size} (0 = all)"
        )
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
