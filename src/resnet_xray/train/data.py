"""Image-folder datasets and the loaders that feed training: augmentation, bad-file skipping, sharding.

Augmentation randomness is a function of ``(seed, epoch, index)`` rather than of a
worker's RNG, so the same seed gives the same batches whatever the worker count, and
a resumed run sees exactly the images an uninterrupted one would have seen.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..errors import XrayError, XrayWarning
from ..image import IMAGE_EXTENSIONS, Preprocessing, Skipped, folder_images, load_image
from .boxes import box_to_crop

log = logging.getLogger(__name__)

VAL_FRACTION = 0.2  # share of each class held out when a folder has no train/val split
DATASET_INFO = "dataset.json"  # written by make-dataset; gives the native image size
BOXES_CSV = "boxes.csv"


# --- finding the images ---


@dataclass
class _Scan:
    """How one dataset scan treats folders it cannot list (the --skip-unreadable choice) and where it notes them."""

    skip_unreadable: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    flag: str | None = None  # the command's option that allows skipping, named in the refusal

    def class_folders(self, root: Path) -> list[str]:
        try:
            return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        except OSError as e:
            raise XrayError(f"{root}: cannot read this folder ({e.strerror or e})") from None

    def files(self, folder: Path) -> list[Path]:
        # The one folder listing (image.folder_images): a sub-folder it cannot read is an error, or noted as skipped.
        return folder_images(folder, skip_unreadable=self.skip_unreadable, skipped=self.skipped, flag=self.flag)


def scan_split(root: Path, class_names: list[str] | None = None, *,
               scan: _Scan | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(path, label)`` pairs of an ImageFolder tree, and its sorted class names.

    A class folder without a single image file is not a class: it would become an output
    that no image ever trains. It is left out, with a one-line warning. A class
    folder that cannot be read is an error naming it, unless the scan skips unreadable folders.
    """
    scan = scan or _Scan()
    listed: dict[str, list[Path]] = {}
    if class_names is None:
        names = []
        for c in scan.class_folders(root):
            listed[c] = scan.files(root / c)
            if listed[c]:
                names.append(c)
            else:
                warnings.warn(f"{root / c}: no {'readable ' if scan.skip_unreadable else ''}images "
                              f"({', '.join(sorted(IMAGE_EXTENSIONS))}); not used as a class", EmptyClassWarning, stacklevel=2)
    else:
        names = class_names
    samples = [(f, i) for i, c in enumerate(names) if (root / c).is_dir()
               for f in (listed[c] if c in listed else scan.files(root / c))]
    return samples, names


class EmptyClassWarning(XrayWarning):
    """A class folder with no images was left out of the class list."""


def find_splits(data_dir: str | Path, *, seed: int = 0, skip_unreadable: bool = False, skipped: list[Skipped] | None = None,
                skip_flag: str | None = None) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """Train and val samples: from ``train/`` and ``val/`` if present, else a stratified split.

    Args:
        skip_unreadable: leave out folders that cannot be read (noted in ``skipped``)
            instead of refusing the dataset.
        skipped: where unreadable folders are noted.
        skip_flag: the command's option that sets ``skip_unreadable``, named in the refusal.

    Raises:
        XrayError: the folder is missing, has no class folders, or no images; or a folder
            in it cannot be read (without ``skip_unreadable``).
    """
    root = Path(data_dir)
    scan = _Scan(skip_unreadable, skipped if skipped is not None else [], skip_flag)
    try:
        found, split = root.is_dir(), (root / "train").is_dir()
    except OSError as e:  # pathlib raises for EACCES
        raise XrayError(f"{root}: cannot read this folder ({e.strerror or e})") from None
    if not found:
        raise XrayError(f"{root}: no such dataset folder (expected train/ and val/ class folders, or class folders)")
    if split:
        train, names = scan_split(root / "train", scan=scan)
        val_root = root / "val" if (root / "val").is_dir() else root / "valid"
        if not val_root.is_dir():
            raise XrayError(f"{root}: has train/ but no val/ folder")
        extra = [c for c in scan.class_folders(val_root) if c not in names and scan.files(val_root / c)]
        if extra:
            raise XrayError(f"{val_root}: class folder {extra[0]!r} is not in {root / 'train'}")
        val, _ = scan_split(val_root, names, scan=scan)
    else:
        samples, names = scan_split(root, scan=scan)
        rng = random.Random(seed)
        train, val = [], []
        for label in range(len(names)):
            group = [s for s in samples if s[1] == label]
            rng.shuffle(group)
            n_val = max(1, round(len(group) * VAL_FRACTION)) if len(group) > 1 else 0
            val += group[:n_val]
            train += group[n_val:]
    if len(names) < 2:
        raise XrayError(f"{root}: found {len(names)} class folder(s) with images; need at least 2 to train a classifier")
    if not train:
        raise XrayError(f"{root}: no training images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if not val:
        raise XrayError(f"{root}: no validation images found")
    return train, val, names


def read_boxes(data_dir: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """``boxes.csv``: relative image path -> box (x0, y0, x1, y1) as fractions of width/height."""
    path = Path(data_dir) / BOXES_CSV
    if not path.exists():
        raise XrayError(f"{path}: not found; --multitask needs a box per image (make-dataset writes one)")
    boxes = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                boxes[row["path"]] = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
            except (KeyError, ValueError):
                raise XrayError(f"{path}: expected columns path,x0,y0,x1,y1 with numbers; bad row {row}") from None
    return boxes


def native_size(data_dir: str | Path) -> int | None:
    """The image side ``make-dataset`` wrote, if this folder came from it."""
    info = Path(data_dir) / DATASET_INFO
    try:
        return int(json.loads(info.read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- datasets ---


@dataclass(frozen=True)
class BadSample:
    """What a dataset returns in place of an image it cannot read; the collate drops it."""

    path: str
    reason: str


def sample_seed(seed: int, epoch: int, index: int) -> int:
    # Large odd multipliers keep (epoch, index) pairs from colliding.
    return (seed * 1_000_003 + epoch * 7_919 * 1_000_033 + index * 2_654_435_761) % (2**63 - 1)


class FolderDataset(Dataset):
    """Labelled images (and optionally boxes); items are addressed as ``(index, epoch)``.

    Args:
        samples: ``(path, label)`` pairs.
        transform: PIL -> tensor, randomised through torch's global RNG (torchvision style).
        seed: base seed of the augmentation randomness.
        boxes: optional ``(x0, y0, x1, y1)`` fractions of each original image; items then
            carry the box in fractions of the network's crop, and random flips move it
            with the image.
        box_geometry: the Preprocessing whose Resize + CenterCrop ``transform`` applies,
            to carry boxes into crop coordinates.
        cache_bytes: keep decoded images in memory up to this many bytes of pixels, so later
            epochs skip the file read and decode (0: off).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform,
        *,
        seed: int = 0,
        boxes: Sequence[tuple[float, float, float, float]] | None = None,
        flip: bool = False,
        box_geometry: Preprocessing | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.box_geometry = box_geometry
        self.transform = transform
        self.seed = seed
        self.boxes = list(boxes) if boxes is not None else None
        self.flip = flip  # box-aware horizontal flip, for the multi-task pipeline
        # Decoded images kept in this process (0: off). Only worth it without worker processes,
        # which are forked afresh each epoch and would lose it.
        self.cache_bytes = cache_bytes
        self._cache: dict[int, Any] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        path, label = self.samples[index]
        img = self._cache.get(index)
        if img is None:
            try:
                img = load_image(path)
            except XrayError as e:
                return BadSample(str(path), str(e).split(": ", 1)[-1])
            size = img.width * img.height * len(img.getbands())
            if self._cached + size <= self.cache_bytes:
                self._cache[index] = img
                self._cached += size
        # A private RNG stream per (seed, epoch, index): resumable and worker-count independent.
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues lazy CUDA/XPU/MTIA seeding, each with a
            # formatted stack trace, ~1 ms per sample on a machine without those devices.
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            flipped = self.flip and bool(torch.rand(()) < 0.5)
            if flipped:
                img = TF.hflip(img)
            x = self.transform(img)
        if self.boxes is None:
            return x, label
        x0, y0, x1, y1 = self.boxes[index]
        if self.box_geometry is not None:
            x0, y0, x1, y1 = box_to_crop((x0, y0, x1, y1), img.size, self.box_geometry)
        if flipped:
            x0, x1 = 1.0 - x1, 1.0 - x0
        return x, label, torch.tensor([x0, y0, x1, y1], dtype=torch.float32)


def collate_skipping(items: list) -> tuple:
    """Stack good items; bad ones travel along as a list so the main process can report them."""
    bad = [(b.path, b.reason) for b in items if isinstance(b, BadSample)]
    good = [b for b in items if not isinstance(b, BadSample)]
    if not good:
        return (None, bad)
    cols = list(zip(*good))
    out = [torch.stack(cols[0]), torch.tensor(cols[1], dtype=torch.long)]
    if len(cols) == 3:
        out.append(torch.stack(cols[2]))
    return (*out, bad)


# --- samplers ---


class EpochSampler(DistributedSampler):
    """DistributedSampler (seeded shuffle, ``set_epoch``) that yields ``(index, epoch)`` keys.

    With one replica it is an ordinary seeded shuffle. It advances its own epoch after
    each pass, so plain ``for x, y in loader`` loops also see fresh augmentation;
    ``set_epoch`` pins it, and ``skip`` resumes part-way through an epoch.
    """

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0  # samples (of this rank) to leave out at the start of the next pass

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        keys = [(i, epoch) for i in super().__iter__()][self.skip :]
        self.skip = 0
        self.epoch += 1
        return iter(keys)


class ShardSampler(torch.utils.data.Sampler):
    """Every ``num_replicas``-th sample in order, with no padding: exact distributed evaluation."""

    def __init__(self, n: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, n, num_replicas))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


# --- loaders ---


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Loader processes when none are asked for: 2, or 0 on a machine with 2 CPUs or fewer.

    On 2 cores the workers' decoding competes with the training step's two compute threads:
    a ResNet-50 bf16 step ran about 13% faster with the loading done in the main process
    from a cache of decoded images (docs/train.md).
    """
    return 0 if usable_cpus() <= 2 else 2


# Decoded pixels kept in memory per split when loading in the main process: the reference
# task's 2500 images are 69 MB; an ImageNet-sized folder stops caching at this cap.
CACHE_BYTES = 1 << 30


# Native runtimes whose thread pools do not survive fork(): with one loaded, forked DataLoader
# workers crashed the parent with SIGSEGV (an in-process quantize or export, then finetune --workers 1).
FORK_UNSAFE_MODULES = ("openvino", "onnxruntime")


class SkippingLoader(DataLoader):
    """A DataLoader whose batches are ``(x, y)`` (or ``(x, y, box)``) with unreadable files dropped.

    Each file that fails is logged once (name and reason) and appended to ``skipped``.
    """

    def __init__(self, *args, skipped: list[Skipped], **kwargs) -> None:
        super().__init__(*args, collate_fn=collate_skipping, **kwargs)
        self.skipped = skipped

    def __iter__(self):
        seen = {s.path for s in self.skipped}
        for batch in super().__iter__():
            *tensors, bad = batch
            for path, reason in bad:
                if path not in seen:
                    seen.add(path)
                    self.skipped.append(Skipped(path, reason))
                    log.warning("skipped %s: %s", path, reason)
            if tensors[0] is not None:
                yield tuple(tensors)


@dataclass
class DataBundle:
    """Everything training needs from a dataset folder."""

    train: DataLoader | None
    val: DataLoader
    class_names: list[str]
    skipped: list[Skipped]  # shared with the loaders: grows as bad files are met
    preprocessing: Preprocessing  # the eval pipeline; saved in checkpoints so classify matches
    multitask: bool = False  # batches carry a third tensor, the box
    info: dict[str, Any] = field(default_factory=dict)


def train_transform(pre: Preprocessing, *, min_crop_scale: float, crop: bool = True) -> T.Compose:
    """RandomResizedCrop + flip (the recipe's train pipeline), normalised like ``pre``."""
    if not crop:  # boxes cannot survive a random crop: eval geometry, and the dataset flips them itself
        return pre.transform()
    return T.Compose([
        T.RandomResizedCrop(pre.crop, scale=(min_crop_scale, 1.0), antialias=True),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def preprocessing_for(data_dir: str | Path, image_size: int | None, *, whole: bool = False) -> Preprocessing:
    """The eval pipeline: images of the dataset's native size are used whole, else Resize + CenterCrop.

    ``whole`` (multi-task) resizes the shorter side straight to the input size, so a square
    image keeps its whole frame and every box stays inside the crop.
    """
    native = native_size(data_dir)
    size = image_size or native or 224
    if whole or (native is not None and size == native):
        return Preprocessing(resize=size, crop=size, source=f"dataset pipeline (Resize {size}, CenterCrop {size}, ImageNet mean/std)")
    if size == 224:
        return Preprocessing.seed()
    resize = round(size * 256 / 224)
    return Preprocessing(resize=resize, crop=size, source=f"ImageNet pipeline scaled (Resize {resize}, CenterCrop {size}, ImageNet mean/std)")


def make_loaders(
    data_dir: str | Path,
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    seed: int = 0,
    distributed: bool = False,
    multitask: bool = False,
    min_crop_scale: float = 0.35,
    pin_memory: bool | None = None,
    skip_unreadable: bool = False,
    skip_flag: str | None = None,
) -> DataBundle:
    """Train and val loaders for an image folder.

    Args:
        data_dir: has ``train/`` and ``val/`` ImageFolder subfolders, or just class
            folders (then 20% of each class is held out, seeded).
        image_size: network input side; default the dataset's native size, else 224.
        batch_size: images per step per process.
        workers: loader processes (0 loads in the main process, from a cache of decoded
            images); None: :func:`default_workers`.
        seed: shuffle and augmentation seed.
        distributed: shard both splits over the initialised process group.
        multitask: batches are ``(x, y, box)`` with boxes from ``boxes.csv``.
        min_crop_scale: smallest RandomResizedCrop area; the recipe's 0.08 would often
            cut small objects out of the frame.
        pin_memory: default: when CUDA is available.
        skip_unreadable: leave out folders that cannot be read, listing them with the
            skipped files, instead of refusing the dataset.
        skip_flag: the command's option that sets ``skip_unreadable``, named when a folder is refused.

    Returns:
        A :class:`DataBundle`.
    """
    workers = _checked_settings(batch_size, workers, image_size)
    skipped: list[Skipped] = []
    train_s, val_s, names = find_splits(data_dir, seed=seed, skip_unreadable=skip_unreadable, skipped=skipped,
                                        skip_flag=skip_flag)
    pre = preprocessing_for(data_dir, image_size, whole=multitask)
    root = Path(data_dir)
    train_boxes, val_boxes = _boxes_of(root, train_s, val_s) if multitask else (None, None)
    world, rank = _world_and_rank(distributed)
    workers, common, cache = _loader_settings(workers, pin_memory, skipped)

    train_ds = FolderDataset(train_s, train_transform(pre, min_crop_scale=min_crop_scale, crop=not multitask), seed=seed, boxes=train_boxes, flip=multitask,
                             box_geometry=pre if multitask else None, cache_bytes=cache)
    sampler = EpochSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    # BatchNorm cannot train on a batch of one, so a ragged last batch is dropped when there is a full one.
    drop_last = len(sampler) > batch_size
    train = SkippingLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)

    val_ds = FolderDataset(val_s, pre.transform(), seed=seed, boxes=val_boxes, box_geometry=pre if multitask else None,
                           cache_bytes=cache)
    val = SkippingLoader(val_ds, batch_size=batch_size, sampler=ShardSampler(len(val_ds), num_replicas=world, rank=rank), **common)
    info = {"train_images": len(train_s), "val_images": len(val_s), "image_size": pre.crop, "world_size": world,
            "workers": workers, "folder": root.resolve().name}
    return DataBundle(train, val, names, skipped, pre, multitask, info)


def _checked_settings(batch_size: int, workers: int | None, image_size: int | None) -> int:
    """Refuse impossible loader settings; returns the number of workers (None: :func:`default_workers`)."""
    if batch_size < 1:
        raise XrayError(f"--batch-size {batch_size}: must be at least 1")
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise XrayError(f"--workers {workers}: must be 0 or more")
    if image_size is not None and image_size < 32:
        raise XrayError(f"--image-size {image_size}: must be at least 32")
    return workers


def _boxes_of(root: Path, *splits: list) -> tuple[list[tuple[float, float, float, float]], ...]:
    """The ``boxes.csv`` box of each sample of each split, in order; a sample without one is refused."""
    boxes = read_boxes(root)

    def lookup(samples):
        out = []
        for p, _ in samples:
            key = p.relative_to(root).as_posix()
            if key not in boxes:
                raise XrayError(f"{root / BOXES_CSV}: no box for {key}")
            out.append(boxes[key])
        return out

    return tuple(lookup(s) for s in splits)


def _world_and_rank(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 1, 0
    import torch.distributed as dist

    return dist.get_world_size(), dist.get_rank()


def _loader_settings(workers: int, pin_memory: bool | None, skipped: list[Skipped]) -> tuple[int, dict[str, Any], int]:
    """(workers, the keyword arguments both loaders share, the decoded-image cache size)."""
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    loaded = [m for m in FORK_UNSAFE_MODULES if m in sys.modules]
    if workers > 0 and loaded:
        log.warning("%s is loaded in this process and forked DataLoader workers crash it; loading data in the main "
                    "process (run training in its own process to use --workers)", " and ".join(loaded))
        workers = 0
    common: dict[str, Any] = dict(num_workers=workers, pin_memory=pin, skipped=skipped)
    if workers > 0:
        # Not persistent: kept-alive workers behind our generator __iter__ crashed the parent with
        # SIGSEGV in a finalizer (an in-process quantize, then finetune --workers 1; CPython 3.11.7,
        # torch 2.14.1). Re-forking the workers each epoch costs well under a second.
        common.update(persistent_workers=False, prefetch_factor=4)
    return workers, common, CACHE_BYTES if workers == 0 else 0


def steps_per_epoch(loader: DataLoader) -> int:
    n = len(loader.sampler)
    return n // loader.batch_size if loader.drop_last else math.ceil(n / loader.batch_size)


def unpack_batch(batch, device: torch.device, channels_last: bool, size: int | None = None):
    """``(x, y, box)`` of a loader's batch on ``device`` (box None without one); ``size`` resizes x."""
    x = batch[0].to(device, non_blocking=True)
    if size is not None and x.shape[-1] != size:
        # Progressive resizing on the batch, not in the workers: the workers' transform stays
        # fixed, and the crop a sample gets stays a function of (seed, epoch, index).
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = batch[1].to(device, non_blocking=True)
    box = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
    return x, y, box
