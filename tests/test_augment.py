import torch

from hlb.augment import TrainBatches, cutout, normalize, random_crop


def test_random_crop_keeps_content_and_covers_all_shifts():
    torch.manual_seed(0)
    x = torch.randn(400, 3, 8, 8)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    out = random_crop(padded, 8)
    assert out.shape == x.shape
    shifts = set()
    for i in range(len(x)):
        # Each output is exactly one 8x8 window of its own padded image.
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert found
        shifts.add(found[0])
    assert len(shifts) == 25


def test_random_crop_mirrors_the_width_axis_only_where_asked():
    g = torch.Generator().manual_seed(0)
    padded = torch.nn.functional.pad(torch.randn(50, 3, 6, 6, generator=g), (1, 1, 1, 1))
    flip = torch.arange(50) % 2 == 0
    g.manual_seed(1)
    plain = random_crop(padded, 6, generator=g)
    g.manual_seed(1)
    mirrored = random_crop(padded, 6, flip=flip, generator=g)    # same windows, mirrored
    assert torch.equal(mirrored[flip], plain[flip].flip(-1))    # width is the last axis
    assert torch.equal(mirrored[~flip], plain[~flip])


def test_alternating_flip_inverts_every_other_epoch():
    torch.manual_seed(0)
    n = 64
    # Image i is constant i along height and a ramp along width, so a flip is visible.
    images = torch.arange(8.0).repeat(n, 3, 8, 1) + torch.arange(n).view(n, 1, 1, 1) * 100
    labels = torch.arange(n)
    batches = TrainBatches(images, labels, batch_size=16, flip="alternate", translate=0)

    def flipped_by_label(epoch):
        state = {}
        images, batch_indices = batches.epoch(epoch)
        for index in batch_indices:
            for img, label in zip(images[index], labels[index]):
                state[int(label)] = bool(img[0, 0, 0] > img[0, 0, -1])
        return state

    e0, e1, e2 = flipped_by_label(0), flipped_by_label(1), flipped_by_label(2)
    assert len(e0) == n
    assert all(e1[i] != e0[i] for i in range(n))
    assert e2 == e0
    assert 0.2 < sum(e0.values()) / n < 0.8        # the first epoch flips about half


def test_batches_are_a_shuffled_partition_dropping_the_remainder():
    images = torch.randn(100, 3, 8, 8)
    labels = torch.arange(100)
    batches = TrainBatches(images, labels, batch_size=32, flip="none", translate=0)
    _, batch_indices = batches.epoch(0)
    assert batch_indices.shape == (3, 32)
    seen = labels[batch_indices.flatten()]
    assert len(batches) == 3 and len(set(seen.tolist())) == 96
    assert not torch.equal(seen, torch.arange(96))


def test_normalize_centres_the_cifar_mean():
    mean = torch.tensor([0.4914, 0.4822, 0.4465]) * 255
    images = mean.view(1, 3, 1, 1).expand(2, 3, 4, 4).round().to(torch.uint8)
    assert normalize(images, torch.float).abs().max() < 0.01


def test_cutout_zeroes_one_square_inside_each_image_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 8, 10, generator=g) + 1        # no zeros before the cutout
    out = cutout(x, 3, generator=g)
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    assert (zero.sum(dim=(2, 3)) == 9).all()               # size*size per channel per image
    assert (zero == zero[:, :1]).all()                     # the same square in every channel
    corners = set()
    for square in zero[:, 0]:
        rows = square.any(1).nonzero().flatten()
        cols = square.any(0).nonzero().flatten()
        # 9 zeros in 3 adjacent rows and 3 adjacent columns: exactly one 3x3 square.
        assert len(rows) == 3 and rows[-1] - rows[0] == 2
        assert len(cols) == 3 and cols[-1] - cols[0] == 2
        corners.add((int(rows[0]), int(cols[0])))
    assert len(corners) == 6 * 8                           # every position inside the image


def test_train_batches_apply_cutout_only_when_asked():
    images = torch.rand(64, 3, 8, 8) + 1
    labels = torch.arange(64)
    for size, zeros in ((0, 0), (4, 16)):
        batches = TrainBatches(images, labels, batch_size=16, flip="alternate", translate=2,
                               cutout=size)
        x, _ = batches.epoch(0)
        assert ((x == 0).sum(dim=(2, 3)) == zeros).all()


def test_batches_come_in_the_asked_memory_format():
    images = torch.rand(64, 3, 8, 8)
    labels = torch.arange(64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        batches = TrainBatches(images, labels, batch_size=16, flip="random", translate=2,
                               memory_format=fmt)
        x, _ = batches.epoch(0)
        assert x.is_contiguous(memory_format=fmt)
