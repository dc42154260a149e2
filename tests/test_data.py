"""CIFAR loading, splits and the tensor batch stream: reproducible, shardable, resumable, correctly augmented."""

from __future__ import annotations

import pytest
import torch

from dnas_prune.train.cifar import CIFAR10_MEAN, CIFAR10_STD, BatchStream, Split, load_cifar10, resolve_data_root
from dnas_prune.errors import DataError

from conftest import write_tree


def make_split(n: int = 40, size: int = 8) -> Split:
    """Random images whose label is their index, so every output can be traced to its source."""
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return Split(images, torch.arange(n))


def batches(stream: BatchStream) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(stream)


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_batches_deterministic_per_seed_and_epoch():
    split = make_split()
    first = batches(BatchStream(split, 8, train=True, seed=3, epoch=1))
    assert same(first, batches(BatchStream(split, 8, train=True, seed=3, epoch=1)))
    assert not same(first, batches(BatchStream(split, 8, train=True, seed=3, epoch=2)))
    torch.manual_seed(123)  # the global RNG plays no part
    assert same(first, batches(BatchStream(split, 8, train=True, seed=3, epoch=1)))
    assert same(first, batches(split.batches(8, train=True, seed=3, epoch=1)))  # the Trainer's interface
    assert split.input_size == (3, 8, 8)


def test_rank_slices_concatenate_to_the_global_batch():
    split = make_split()
    whole = batches(BatchStream(split, 8, train=True, seed=0))
    parts = [batches(BatchStream(split, 8, train=True, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    with pytest.raises(DataError):
        BatchStream(split, 7, train=True, world_size=2)


def test_start_batch_resumes_with_the_same_batches():
    split = make_split()
    whole = batches(BatchStream(split, 8, train=True, seed=5, epoch=4))
    resumed = BatchStream(split, 8, train=True, seed=5, epoch=4, start_batch=2)
    assert len(resumed) == 3 and same(whole[2:], batches(resumed))


@pytest.mark.parametrize("pad", [4, 2, 0])
def test_augmentation_is_a_padded_crop_or_flip_with_labels_aligned(pad: int):
    split = make_split()
    plain = normalize(split.images)
    pad_value = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    side = 8 + 2 * pad
    changed = 0
    for x, y in BatchStream(split, 8, train=True, seed=0, channels_last=True, crop_padding=pad):
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        for image, label in zip(x, y):
            padded = pad_value.expand(1, 3, side, side).clone()
            padded[..., pad:pad + 8, pad:pad + 8] = plain[label]
            candidates = [padded[0, :, i:i + 8, j:j + 8] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
            candidates += [c.flip(-1) for c in candidates]
            assert any(torch.allclose(image, c, atol=1e-5) for c in candidates)
            changed += not torch.allclose(image, plain[label], atol=1e-5)
    assert changed > 10
    assert sorted(torch.cat([y for _, y in BatchStream(split, 8, train=True)]).tolist()) == list(range(40))


def test_alternate_flip_mirrors_each_image_in_exactly_one_of_two_epochs():
    split = make_split()
    flips = [BatchStream(split, 8, train=True, seed=2, epoch=e, flip="alternate").flips for e in range(3)]
    assert bool((flips[0] ^ flips[1]).all()) and torch.equal(flips[0], flips[2])
    assert 0 < int(flips[0].sum()) < len(split)
    random = [BatchStream(split, 8, train=True, seed=2, epoch=e).flips for e in range(2)]
    assert not bool((random[0] ^ random[1]).all())  # the default draws afresh each epoch
    with pytest.raises(ValueError, match="flip must be one of"):
        BatchStream(split, 8, train=True, flip="sometimes")


def test_eval_stream_is_sequential_unaugmented_and_keeps_the_last_batch():
    split = make_split(n=20)
    out = batches(BatchStream(split, 8, train=False))
    assert [len(y) for _, y in out] == [8, 8, 4]
    assert torch.allclose(torch.cat([x for x, _ in out]), normalize(split.images), atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in out]), split.labels)


def test_load_imagefolder_splits(tiny_cifar):
    data = load_cifar10(tiny_cifar, val_size=6, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 12)
    assert data.classes == ["cat", "dog", "frog"] and data.num_classes == 3
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert torch.bincount(data.val.labels).tolist() == [2, 2, 2]
    train_rows = {bytes(img.numpy()) for img in data.train.images}
    assert not any(bytes(img.numpy()) in train_rows for img in data.val.images)
    limited = load_cifar10(tiny_cifar, val_size=6, limit_train=10, seed=0)
    assert len(limited.train) == 10 and torch.equal(limited.val.images, data.val.images)
    assert torch.equal(limited.train.images, data.train.images[:10])


def test_bad_layouts_raise_one_line_data_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    cases = {}
    cases["missing"] = tmp_path / "nope"
    (tmp_path / "flat").mkdir()
    cases["wrong layout"] = tmp_path / "flat"
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    cases["empty"] = tmp_path / "empty"
    write_tree(tmp_path / "mismatch", {"train": 1}, classes=("a", "b"))
    write_tree(tmp_path / "mismatch", {"test": 1}, classes=("a", "c"))
    cases["class mismatch"] = tmp_path / "mismatch"
    for what, root in cases.items():
        with pytest.raises(DataError) as info:
            load_cifar10(root)
        assert "\n" not in str(info.value), what
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_root(tmp_path / "nope")
    monkeypatch.setenv("DNAS_PRUNE_DATA", str(tmp_path / "flat"))
    assert resolve_data_root(None) == tmp_path / "flat"


def test_real_cifar10_splits(cifar_root):
    data = load_cifar10(cifar_root)  # decoded once, then read from the cache
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 10000)
    assert data.num_classes == 10 and data.classes[0] == "airplane"
    assert data.train.images.shape == (45000, 3, 32, 32)


def test_no_flip_and_no_padding_train_stream_is_shuffled_but_unaugmented():
    split = make_split(n=20)
    stream = BatchStream(split, 8, train=True, seed=4, flip="none", crop_padding=0)
    out = batches(stream)
    assert [len(y) for _, y in out] == [8, 8]  # train streams drop the last partial batch
    for x, y in out:  # labels are source indices: every image is its source, unchanged
        assert torch.allclose(x, normalize(split.images[y]), atol=1e-5)
    assert torch.cat([y for _, y in out]).tolist() != list(range(16))


def test_a_class_folder_the_jpeg_reader_would_read_in_part_or_not_at_all_is_refused(tmp_path, monkeypatch):
    """A PNG class (or an empty one) used to train as a class with no images, shifting nothing but the accuracy."""
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    root = write_tree(tmp_path / "pngs", {"train": 2, "test": 1}, classes=("a", "b"))
    (root / "train" / "b" / "0001.jpg").rename(root / "train" / "b" / "0001.png")
    with pytest.raises(DataError, match="b: 1 JPEG images and 1 other images \\(.png\\); .*--data-kind imagefolder"):
        load_cifar10(root)
    root = write_tree(tmp_path / "empty_class", {"train": 2, "test": 1}, classes=("a", "b"))
    for image in (root / "train" / "b").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="b: 0 JPEG images; "):
        load_cifar10(root)


def test_an_edited_tree_replaces_its_decode_cache_and_leaves_other_trees(tmp_path, monkeypatch):
    """Each edit of a tree decoded it into a new cache file beside the old ones (one full copy of the images each)."""
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    first = write_tree(tmp_path / "first", {"train": 4, "test": 2}, classes=("a", "b"))
    other = write_tree(tmp_path / "other", {"train": 4, "test": 2}, classes=("a", "b"))
    load_cifar10(first, val_size=2)
    load_cifar10(other, val_size=2)
    before = set((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(before) == 2
    (first / "train" / "a" / "0000.jpg").rename(first / "train" / "a" / "extra.jpg")  # an edit: a new mtime order
    write_tree(tmp_path / "more", {"train": 1}, classes=("a",))
    (tmp_path / "more" / "train" / "a" / "0000.jpg").rename(first / "train" / "a" / "added.jpg")
    edited = load_cifar10(first, val_size=2)
    after = set((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(after) == 2 and len(after & before) == 1  # the other tree's stays; the first's was replaced
    assert len(edited.train) + len(edited.val) == 9
    assert len(load_cifar10(first, val_size=2).train) == 7  # read from the new cache


def test_a_decode_cache_of_an_older_name_is_taken_and_an_unwritable_cache_only_costs_a_decode(tmp_path, monkeypatch):
    from dnas_prune.train import cifar

    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "cache"))
    root = write_tree(tmp_path / "tree", {"train": 4, "test": 2}, classes=("a", "b"))
    load_cifar10(root, val_size=2)
    (path,) = (tmp_path / "cache").glob("cifar10-*.pt")
    older = path.with_name(f"cifar10-{path.stem.rsplit('-', 1)[1]}.pt")  # the same state under the older name
    path.rename(older)
    monkeypatch.setattr(cifar, "_read_imagefolder", lambda root: pytest.fail("decoded again"))
    assert len(load_cifar10(root, val_size=2).train) == 6
    assert [p.name for p in (tmp_path / "cache").glob("cifar10-*.pt")] == [path.name]  # renamed, not copied
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("DNAS_PRUNE_CACHE", str(tmp_path / "a_file" / "cache"))  # a cache that cannot be written
    assert len(load_cifar10(root, val_size=2).train) == 6
