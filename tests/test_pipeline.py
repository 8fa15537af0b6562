"""The training input stream: a pure function of (seed, step), aligned crops, exact sharding."""
import numpy as np

from unet_medical.data.pipeline import (MAX_CENTRES_PER_IMAGE, CropGeometry, Sampling, foreground_centres,
                                 make_train_dataset, pack_images)


def toy_data(n=5, hw=(40, 36)):
    rng = np.random.default_rng(0)
    images = [rng.random((*hw, 1), dtype=np.float32) for _ in range(n)]
    # The mask encodes the image so image/label alignment can be checked exactly.
    masks = [(im[..., 0] > 0.5).astype(np.uint8) for im in images]
    return images, masks, [f"img{i}" for i in range(n)]


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_labels_are_the_centre_of_the_input_crop():
    images, masks, names = toy_data()
    geo = CropGeometry(input_size=24, output_size=16)
    for x, y in batches(make_train_dataset(images, masks, names, geo, batch_size=2, seed=3,
                                           start_step=0, max_steps=6)):
        assert x.shape == (2, 24, 24, 1) and y.shape == (2, 16, 16) and y.dtype == np.int32
        np.testing.assert_array_equal((x[:, 4:20, 4:20, 0] > 0.5).astype(np.int32), y)


def test_same_seed_same_stream_and_resume_continues_it():
    images, masks, names = toy_data()
    geo = CropGeometry(16, 16)
    kw = dict(batch_size=3, seed=7, max_steps=8)
    full = batches(make_train_dataset(images, masks, names, geo, start_step=0, **kw))
    again = batches(make_train_dataset(images, masks, names, geo, start_step=0, **kw))
    tail = batches(make_train_dataset(images, masks, names, geo, start_step=5, **kw))
    assert len(full) == 8 and len(tail) == 3
    for (a, b), (c, d) in zip(full, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    for (a, b), (c, d) in zip(full[5:], tail):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    other = batches(make_train_dataset(images, masks, names, geo, start_step=0, **{**kw, "seed": 8}))
    assert not np.array_equal(full[0][0], other[0][0])


def test_each_epoch_visits_every_image_once():
    n = 5
    images = [np.full((16, 16, 1), i / 10, np.float32) for i in range(n)]
    masks = [np.zeros((16, 16), np.uint8) for _ in range(n)]
    ds = make_train_dataset(images, masks, [str(i) for i in range(n)], CropGeometry(16, 16),
                            batch_size=1, seed=0, start_step=0, max_steps=3 * n)
    seen = [int(round(x[0, 0, 0, 0] * 10)) for x, _ in batches(ds)]
    for epoch in range(3):
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))


def test_two_workers_see_the_combined_batch():
    images, masks, names = toy_data()
    geo = CropGeometry(16, 16)
    one = batches(make_train_dataset(images, masks, names, geo, batch_size=4, seed=1, start_step=0, max_steps=3))
    shards = [batches(make_train_dataset(images, masks, names, geo, batch_size=2, seed=1, start_step=0,
                                         max_steps=3, rank=r, world_size=2)) for r in range(2)]
    for step in range(3):
        combined = np.concatenate([shards[0][step][0], shards[1][step][0]])
        np.testing.assert_array_equal(one[step][0], combined)


def test_pack_images_mirrors_and_packs_mixed_sizes_without_filler():
    a = np.arange(12, dtype=np.float32).reshape(3, 4, 1)
    b = np.ones((5, 2, 1), np.float32)
    packed = pack_images([a, b], [a[..., 0].astype(np.uint8), b[..., 0].astype(np.uint8)], 2)
    np.testing.assert_array_equal(packed.sizes, [[3, 4], [5, 2]])
    np.testing.assert_array_equal(packed.padded, [[7, 8], [9, 6]])
    assert packed.pixels.size == 7 * 8 + 9 * 6 and packed.labels.size == 7 * 8 + 9 * 6
    first = packed.pixels[:56].reshape(7, 8)
    np.testing.assert_array_equal(first, np.pad(a[..., 0], 2, mode="reflect"))
    np.testing.assert_array_equal(packed.labels[56:].reshape(9, 6), np.pad(b[..., 0], 2, mode="reflect"))


def test_crops_equal_slices_of_the_padded_image():
    rng = np.random.default_rng(3)
    images = [rng.random((40, 50, 2), dtype=np.float32), rng.random((33, 37, 2), dtype=np.float32)]
    masks = [(im[..., 0] > 0.5).astype(np.uint8) for im in images]
    geo = CropGeometry(24, 16)  # margin 4
    for image, label in make_train_dataset(images, masks, ["a", "b"], geo, batch_size=1, seed=5, start_step=0,
                                           max_steps=6):
        image, label = image.numpy()[0], label.numpy()[0]
        found = False
        for source, mask in zip(images, masks):
            padded = np.pad(source, ((4, 4), (4, 4), (0, 0)), mode="reflect")
            for y in range(source.shape[0] - 16 + 1):
                for x in range(source.shape[1] - 16 + 1):
                    if np.array_equal(padded[y:y + 24, x:x + 24], image):
                        assert np.array_equal(mask[y:y + 16, x:x + 16], label)
                        found = True
        assert found


def test_foreground_sampling_centres_crops_on_the_rare_class():
    rng = np.random.default_rng(0)
    masks = [np.zeros((200, 200), np.uint8) for _ in range(4)]
    for m in masks:
        y, x = rng.integers(10, 190, 2)
        m[y - 2:y + 3, x - 2:x + 3] = 1  # one 5 x 5 object per image: 0.06 % of pixels
    images = [m[..., None].astype(np.float32) for m in masks]
    geo = CropGeometry(32, 32)

    def hits(sampling):
        ds = make_train_dataset(images, masks, list("abcd"), geo, batch_size=1, seed=2, start_step=0,
                                max_steps=60, sampling=sampling)
        return sum(int(label.numpy().any()) for _, label in ds)

    uniform, centred = hits(Sampling()), hits(Sampling(foreground=1.0, classes=(1,)))
    assert centred == 60
    assert uniform < 15


def test_foreground_centres_are_subsampled_and_indexed_per_image():
    masks = [np.ones((100, 100), np.uint8), np.zeros((10, 10), np.uint8)]
    centres, first, count = foreground_centres(masks, (1,), seed=0)
    assert list(count) == [MAX_CENTRES_PER_IMAGE, 0] and list(first) == [0, MAX_CENTRES_PER_IMAGE]
    assert len(np.unique(centres[:MAX_CENTRES_PER_IMAGE], axis=0)) == MAX_CENTRES_PER_IMAGE


def test_the_training_streams_run_without_the_autotune_thread():
    # TF 2.21 joins tf.data's autotuning thread when an iterator is deleted, and that thread wakes only
    # at its next optimization (up to 60 s away): the loop's end then stalled before the final evaluation.
    from unet_medical.data.patches3d import make_patch_dataset

    images, masks, names = toy_data()
    two_d = make_train_dataset(images, masks, names, CropGeometry(16, 16), batch_size=2, seed=0, start_step=0,
                               max_steps=10**9)
    volumes = [np.zeros((12, 12, 8, 1), np.float32)] * 2
    three_d = make_patch_dataset(volumes, [np.zeros((12, 12, 8), np.uint8)] * 2, ["a", "b"], (8, 8, 8),
                                 batch_size=2, seed=1, start_step=0, max_steps=10**9, classes=(1,))
    for stream in (two_d, three_d):
        assert stream.options().autotune.enabled is False
        iterator = iter(stream)
        next(iterator)  # an endless stream, stopped by the loop, deletes cleanly
        del iterator
