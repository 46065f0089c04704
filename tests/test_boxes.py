"""Detection targets under MixUp and CutMix, decoded sample by sample from MixParams alone."""

import numpy as np
import pytest
import torch

from lightning_mixup._boxes import (
    MIN_VISIBLE,
    check_detection_batch,
    check_detection_targets,
    detection_shape,
    image_sizes,
    is_detection_targets,
    mix_detection,
    mix_detection_images,
    mix_detection_targets,
)
from lightning_mixup.policies import MixParams, make_policy

POLICIES = {
    "mixup": dict(alpha=1.0, cutmix_alpha=0.0),
    "cutmix": dict(alpha=0.0, cutmix_alpha=1.0),
    "switch": dict(alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5),
}


# ---------------------------------------------------------------------------- helpers
def random_targets(sizes, seed, max_boxes=5, extra=False):
    """Valid xyxy boxes inside each (H, W), 0..max_boxes per image, with labels (and extras)."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for h, w in sizes:
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=g))
        x1 = torch.rand(n, generator=g) * (w - 2)
        y1 = torch.rand(n, generator=g) * (h - 2)
        x2 = x1 + 1 + torch.rand(n, generator=g) * (w - 1 - x1)
        y2 = y1 + 1 + torch.rand(n, generator=g) * (h - 1 - y1)
        target = {
            "boxes": torch.stack([x1, y1, x2, y2], 1),
            "labels": torch.randint(1, 11, (n,), generator=g),
        }
        if extra:
            target["area"] = (x2 - x1) * (y2 - y1)
            target["iscrowd"] = torch.zeros(n, dtype=torch.int64)
        targets.append(target)
    return targets


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def area(b):
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def clip(b, region):
    c0, r0, c1, r1 = region
    return [max(b[0], c0), max(b[1], r0), min(b[2], c1), min(b[3], r1)]


def expected(targets, params, sizes, min_visible=MIN_VISIBLE):
    """The rules of the docs, in plain Python: per sample (boxes, labels, weights, rows kept)."""
    out = []
    for i, j in enumerate(params.partner.tolist()):
        lam, cut = float(params.lam[i]), bool(params.cut[i])
        own_boxes, own_labels = targets[i]["boxes"].tolist(), targets[i]["labels"].tolist()
        other_boxes, other_labels = targets[j]["boxes"].tolist(), targets[j]["labels"].tolist()
        own_rows = [(i, k) for k in range(len(own_boxes))]
        other_rows = [(j, k) for k in range(len(other_boxes))]
        if params.identity or j == i or lam >= 1:
            out.append((own_boxes, own_labels, [1.0] * len(own_boxes), own_rows))
            continue
        if not cut:
            weights = [lam] * len(own_boxes) + [1 - lam] * len(other_boxes)
            out.append(
                (own_boxes + other_boxes, own_labels + other_labels, weights, own_rows + other_rows)
            )
            continue
        r0, c0 = params.lo[i].tolist()
        r1 = min(int(params.hi[i, 0]), sizes[i][0], sizes[j][0])
        c1 = min(int(params.hi[i, 1]), sizes[i][1], sizes[j][1])
        if r0 >= r1 or c0 >= c1:
            out.append((own_boxes, own_labels, [1.0] * len(own_boxes), own_rows))
            continue
        region = (c0, r0, c1, r1)
        boxes, labels, rows = [], [], []
        for b, label, row in zip(own_boxes, own_labels, own_rows):
            if area(b) - area(clip(b, region)) >= min_visible * area(b):
                boxes.append(b), labels.append(label), rows.append(row)
        for b, label, row in zip(other_boxes, other_labels, other_rows):
            inside = area(clip(b, region))
            if inside > 0 and inside >= min_visible * area(b):
                boxes.append(clip(b, region)), labels.append(label), rows.append(row)
        out.append((boxes, labels, [1.0] * len(boxes), rows))
    return out


def assert_decoded(targets, mixed, params, sizes, min_visible=MIN_VISIBLE):
    for i, (got, (boxes, labels, weights, rows)) in enumerate(
        zip(mixed, expected(targets, params, sizes, min_visible))
    ):
        assert got["boxes"].shape == (len(boxes), 4), i
        torch.testing.assert_close(
            got["boxes"], torch.tensor(boxes, dtype=got["boxes"].dtype).view(-1, 4)
        )
        assert got["labels"].tolist() == labels and got["labels"].dtype == torch.int64
        assert got["weights"].dtype == torch.float32
        torch.testing.assert_close(got["weights"], torch.tensor(weights, dtype=torch.float32))
        for key in set(got) - {"boxes", "labels", "weights"}:
            want = [targets[s][key][k] for s, k in rows]
            want = torch.stack(want) if want else targets[i][key][:0]
            assert torch.equal(got[key], want), (i, key)


def assert_valid_boxes(mixed, sizes):
    for target, (h, w) in zip(mixed, sizes):
        b = target["boxes"]
        assert b.ndim == 2 and b.shape[1] == 4
        assert bool((b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all())
        assert bool((b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all())


def expected_image(images, params, i):
    j, lam = int(params.partner[i]), float(params.lam[i])
    x = images[i].double()
    if params.identity or j == i or lam >= 1:
        return x
    if not bool(params.cut[i]):
        return lam * x + (1 - lam) * images[j].double()
    (r0, c0), (r1, c1) = params.lo[i].tolist(), params.hi[i].tolist()
    x = x.clone()
    x[:, r0:r1, c0:c1] = images[j].double()[:, r0:r1, c0:c1]
    return x


# ---------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("mode", ["elem", "batch"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("batch_size", [1, 5, 6])
def test_every_mixed_sample_decodes_from_params_alone(policy, mode, batch_size):
    h, w = 24, 32
    for seed in range(12):
        images = torch.rand(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed))
        targets = random_targets([(h, w)] * batch_size, seed, extra=seed % 2 == 0)
        before = [{k: v.clone() for k, v in t.items()} for t in targets]
        params = make_policy(**POLICIES[policy], mode=mode).sample(
            detection_shape(images), np.random.default_rng(seed)
        )
        mixed_images, mixed = mix_detection(images, targets, params)
        assert_decoded(targets, mixed, params, [(h, w)] * batch_size)
        assert_valid_boxes(mixed, [(h, w)] * batch_size)
        for i in range(batch_size):
            torch.testing.assert_close(
                mixed_images[i].double(), expected_image(images, params, i), atol=1e-6, rtol=0
            )
            if bool(params.cut[i]):  # pasted pixels are copied bit for bit
                assert torch.equal(mixed_images[i], expected_image(images, params, i).float())
        for t, b in zip(targets, before):  # nothing written into the inputs
            assert t.keys() == b.keys() and all(torch.equal(t[k], b[k]) for k in t)


@pytest.mark.parametrize("mode", ["elem", "batch"])
def test_cut_partner_boxes_lie_in_the_region_and_covered_own_boxes_are_dropped(mode):
    h = w = 32
    seen_drop = seen_clip = 0
    for seed in range(40):
        targets = random_targets([(h, w)] * 4, seed, max_boxes=6)
        params = make_policy(0.0, 1.0, mode=mode).sample((4, 1, h, w), np.random.default_rng(seed))
        mixed = mix_detection_targets(targets, params, [(h, w)] * 4)
        for i, target in enumerate(mixed):
            j = int(params.partner[i])
            if j == i:
                continue
            (r0, c0), (r1, c1) = params.lo[i].tolist(), params.hi[i].tolist()
            region = (c0, r0, c1, r1)
            keep = [
                area(b) - area(clip(b, region)) >= MIN_VISIBLE * area(b)
                for b in targets[i]["boxes"].tolist()
            ]
            n_own = sum(keep)
            own, theirs = target["boxes"][:n_own], target["boxes"][n_own:]
            assert torch.equal(own, targets[i]["boxes"][torch.tensor(keep, dtype=torch.bool)])
            # every partner box lies in the region
            assert bool((theirs[:, 0] >= c0).all() and (theirs[:, 2] <= c1).all())
            assert bool((theirs[:, 1] >= r0).all() and (theirs[:, 3] <= r1).all())
            # an own box the region covers wholly is never kept
            for b in targets[i]["boxes"].tolist():
                if area(clip(b, region)) == area(b):
                    assert b not in own.tolist()
            seen_drop += len(keep) - n_own
            seen_clip += sum(1 for b in theirs.tolist() if b not in targets[j]["boxes"].tolist())
    assert seen_drop > 0 and seen_clip > 0  # the cases under test did occur


def cut_params(region_rows, region_cols, batch_size=2, lam=0.5):
    """Sample 0 and 1 partner each other; both cut by the same region (rows, cols)."""
    partner = torch.tensor([1, 0] + list(range(2, batch_size)))
    lo = torch.tensor([[region_rows[0], region_cols[0]]] * batch_size)
    hi = torch.tensor([[region_rows[1], region_cols[1]]] * batch_size)
    lam_ = torch.full((batch_size,), lam, dtype=torch.float64)
    lam_[2:] = 1.0
    cut = torch.ones(batch_size, dtype=torch.bool)
    return MixParams(partner, lam_, cut, lo, hi, per_batch=False, identity=False)


def test_visible_fraction_rule_at_its_edges():
    # region: columns 10..20, rows 0..20 (xyxy (10, 0, 20, 20)) in a 20x40 (H x W) image
    params = cut_params((0, 20), (10, 20))
    own = torch.tensor(
        [
            box(12, 2, 18, 8),  # wholly covered: dropped
            box(5, 0, 15, 10),  # half covered: 0.5 visible, kept (at least MIN_VISIBLE)
            box(4, 0, 14, 10),  # 40 % covered: kept
            box(6, 0, 16, 10),  # 60 % covered: dropped
            box(25, 5, 35, 15),  # outside: kept
        ]
    )
    other = torch.tensor(
        [
            box(12, 2, 18, 8),  # wholly inside: kept as it is
            box(15, 0, 25, 10),  # half inside: kept, clipped to (15, 0, 20, 10)
            box(16, 0, 26, 10),  # 40 % inside: dropped
            box(30, 0, 35, 5),  # outside: dropped
        ]
    )
    targets = [
        {"boxes": own, "labels": torch.arange(5)},
        {"boxes": other, "labels": torch.arange(10, 14)},
    ]
    mixed = mix_detection_targets(targets, params, [(20, 40)] * 2)
    assert mixed[0]["labels"].tolist() == [1, 2, 4, 10, 11]
    assert mixed[0]["boxes"].tolist() == [
        box(5, 0, 15, 10),
        box(4, 0, 14, 10),
        box(25, 5, 35, 15),
        box(12, 2, 18, 8),
        box(15, 0, 20, 10),
    ]
    assert mixed[0]["weights"].tolist() == [1.0] * 5
    # a stricter rule keeps fewer boxes
    strict = mix_detection_targets(targets, params, [(20, 40)] * 2, min_visible=0.9)
    assert strict[0]["labels"].tolist() == [4, 10]


def test_a_sample_may_end_with_no_boxes_in_the_right_shapes_and_dtypes():
    params = cut_params((0, 16), (0, 16))  # the whole 16x16 image is the partner's
    targets = [
        {
            "boxes": torch.tensor([box(2, 2, 6, 6)], dtype=torch.float64),
            "labels": torch.tensor([3]),
        },
        {
            "boxes": torch.zeros(0, 4, dtype=torch.float64),
            "labels": torch.zeros(0, dtype=torch.long),
        },
    ]
    mixed = mix_detection_targets(targets, params, [(16, 16)] * 2)
    for key, shape, dtype in (
        ("boxes", (0, 4), torch.float64),
        ("labels", (0,), torch.int64),
        ("weights", (0,), torch.float32),
    ):
        assert mixed[0][key].shape == shape and mixed[0][key].dtype == dtype
    assert mixed[1]["boxes"].tolist() == [box(2, 2, 6, 6)]
    assert mixed[1]["boxes"].dtype == torch.float64


def test_odd_batches_leave_the_self_paired_sample_with_its_own_boxes_and_unit_weights():
    for seed in range(10):
        targets = random_targets([(16, 16)] * 5, seed)
        params = make_policy(1.0, 0.0).sample((5, 1, 16, 16), np.random.default_rng(seed))
        alone = int((params.partner == torch.arange(5)).nonzero())
        mixed = mix_detection_targets(targets, params, [(16, 16)] * 5)
        assert torch.equal(mixed[alone]["boxes"], targets[alone]["boxes"])
        assert mixed[alone]["weights"].tolist() == [1.0] * len(targets[alone]["boxes"])


def test_identity_params_keep_every_target_and_add_unit_weights():
    targets = random_targets([(16, 16)] * 4, 0, max_boxes=3) + [
        {"boxes": torch.tensor([box(0, 0, 2, 2)]), "labels": torch.tensor([1])}
    ]
    params = make_policy(1.0, 0.0).sample((5, 1, 16, 16), np.random.default_rng(0), p=0.0)
    assert params.identity
    mixed = mix_detection_targets(targets, params, [(16, 16)] * 5)
    for got, want in zip(mixed, targets):
        assert got["boxes"] is want["boxes"] and got["labels"] is want["labels"]
        assert got["weights"].tolist() == [1.0] * len(want["boxes"])


def test_mixup_weights_are_lambda_and_one_minus_lambda_and_given_weights_compose():
    params = MixParams(
        torch.tensor([1, 0]),
        torch.tensor([0.3, 0.3], dtype=torch.float64),
        torch.zeros(2, dtype=torch.bool),
    )
    targets = [
        {
            "boxes": torch.tensor([box(0, 0, 4, 4), box(1, 1, 3, 3)]),
            "labels": torch.tensor([1, 2]),
            "weights": torch.tensor([1.0, 0.5]),
        },
        {
            "boxes": torch.tensor([box(5, 5, 8, 8)]),
            "labels": torch.tensor([7]),
            "weights": torch.tensor([2.0]),
        },
    ]
    mixed = mix_detection_targets(targets, params, [(8, 8)] * 2)
    assert mixed[0]["labels"].tolist() == [1, 2, 7] and mixed[1]["labels"].tolist() == [7, 1, 2]
    torch.testing.assert_close(mixed[0]["weights"], torch.tensor([0.3, 0.15, 1.4]))
    torch.testing.assert_close(mixed[1]["weights"], torch.tensor([0.6, 0.7, 0.35]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_are_kept(dtype):
    images = torch.rand(4, 3, 16, 16).to(dtype)
    targets = random_targets([(16, 16)] * 4, 3)
    for t in targets:
        t["boxes"] = t["boxes"].to(dtype if dtype != torch.bfloat16 else torch.float16)
    for policy in POLICIES.values():
        params = make_policy(**policy, mode="elem").sample(images.shape, np.random.default_rng(1))
        mixed_images, mixed = mix_detection(images, targets, params)
        assert mixed_images.dtype == dtype and mixed_images.shape == images.shape
        for got, want in zip(mixed, targets):
            assert got["boxes"].dtype == want["boxes"].dtype
            assert got["labels"].dtype == torch.int64 and got["weights"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_is_kept_on_cuda():
    images = torch.rand(6, 3, 16, 16, device="cuda")
    targets = [{k: v.cuda() for k, v in t.items()} for t in random_targets([(16, 16)] * 6, 0)]
    cpu_targets = random_targets([(16, 16)] * 6, 0)
    for policy in POLICIES.values():
        params = make_policy(**policy, mode="elem").sample(images.shape, np.random.default_rng(2))
        mixed_images, mixed = mix_detection(images, targets, params)
        _, on_cpu = mix_detection(images.cpu(), cpu_targets, params)
        assert mixed_images.device == images.device
        for got, want in zip(mixed, on_cpu):
            assert all(v.device == images.device for v in got.values())
            assert all(torch.equal(got[k].cpu(), want[k]) for k in want)


# ---------------------------------------------------------------------------- images of several sizes
SIZES = [(20, 30), (32, 16), (24, 24), (28, 36), (18, 40)]


def list_batch(seed, sizes=SIZES, channels=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(channels, h, w, generator=g) for h, w in sizes]


def test_mixup_of_different_sizes_blends_on_the_larger_canvas_at_the_top_left():
    images = list_batch(0)
    targets = random_targets(SIZES, 0, extra=True)
    for seed in range(8):
        params = make_policy(1.0, 0.0, mode="elem").sample(
            detection_shape(images), np.random.default_rng(seed)
        )
        mixed_images, mixed = mix_detection(images, targets, params)
        sizes = []
        for i, x in enumerate(mixed_images):
            j, lam = int(params.partner[i]), float(params.lam[i])
            if j == i:
                assert x is images[i]
                sizes.append(SIZES[i])
                continue
            (hi_, wi), (hj, wj) = SIZES[i], SIZES[j]
            h, w = max(hi_, hj), max(wi, wj)
            assert x.shape == (3, h, w)
            want = torch.zeros(3, h, w, dtype=torch.float64)
            want[:, :hi_, :wi] += lam * images[i].double()
            want[:, :hj, :wj] += (1 - lam) * images[j].double()
            torch.testing.assert_close(x.double(), want, atol=1e-6, rtol=0)
            sizes.append((h, w))
        assert_decoded(targets, mixed, params, SIZES)  # boxes unchanged, own then partner's
        assert_valid_boxes(mixed, sizes)


def test_cutmix_of_different_sizes_pastes_within_the_overlap():
    images = list_batch(1)
    targets = random_targets(SIZES, 1, extra=True)
    assert detection_shape(images) == (5, 3, 18, 16)
    for seed in range(8):
        for shape in (detection_shape(images), (5, 3, 40, 40)):  # the second needs clipping
            params = make_policy(0.0, 1.0, mode="elem").sample(shape, np.random.default_rng(seed))
            mixed_images, mixed = mix_detection(images, targets, params)
            for i, x in enumerate(mixed_images):
                j = int(params.partner[i])
                assert x.shape == images[i].shape
                if j == i:
                    continue
                r0, c0 = params.lo[i].tolist()
                r1 = min(int(params.hi[i, 0]), SIZES[i][0], SIZES[j][0])
                c1 = min(int(params.hi[i, 1]), SIZES[i][1], SIZES[j][1])
                want = images[i].clone()
                if r0 < r1 and c0 < c1:
                    want[:, r0:r1, c0:c1] = images[j][:, r0:r1, c0:c1]
                assert torch.equal(x, want)
            assert_decoded(targets, mixed, params, SIZES)
            assert_valid_boxes(mixed, SIZES)


def test_a_list_of_equal_images_mixes_like_the_tensor():
    images = torch.rand(6, 3, 16, 16)
    for policy in POLICIES.values():
        params = make_policy(**policy, mode="elem").sample(images.shape, np.random.default_rng(4))
        as_list = mix_detection_images(list(images.unbind()), params)
        assert torch.equal(torch.stack(as_list), mix_detection_images(images, params))


# ---------------------------------------------------------------------------- recognising and errors
def test_is_detection_targets():
    assert is_detection_targets([{"boxes": torch.zeros(0, 4)}])
    assert not is_detection_targets([])
    assert not is_detection_targets(torch.zeros(3))
    assert not is_detection_targets([torch.zeros(3)])


def good(n=1):
    return {"boxes": torch.tensor([box(0, 0, 2, 2)] * n), "labels": torch.ones(n, dtype=torch.long)}


@pytest.mark.parametrize(
    "targets, error, match",
    [
        (torch.zeros(2, 4), TypeError, "list with one dict per image"),
        ([good(), "x"], TypeError, "list with one dict per image"),
        ([good()], ValueError, r"2 images, got 1 targets"),
        ([good(), {"labels": torch.ones(1, dtype=torch.long)}], ValueError, "same keys"),
        ([{"boxes": torch.zeros(0, 4)}] * 2, ValueError, "has no 'labels'"),
        ([{**good(), "boxes": torch.zeros(1, 4, dtype=torch.long)}] * 2, TypeError, "floating"),
        ([{**good(), "boxes": torch.zeros(4)}] * 2, ValueError, r"shape \(N, 4\).*torch.zeros"),
        ([{**good(), "labels": torch.ones(1)}] * 2, TypeError, r"int64.*\.long\(\)"),
        (
            [{**good(), "labels": torch.ones(2, dtype=torch.long)}] * 2,
            ValueError,
            r"\(N,\) = \(1,\)",
        ),
        ([{**good(), "weights": torch.ones(3)}] * 2, ValueError, r"\"weights\"\] must be"),
        ([{**good(), "masks": torch.zeros(1, 4, 4)}] * 2, ValueError, "'masks'.*move or cut"),
        ([{**good(), "keypoints": torch.zeros(1, 3, 3)}] * 2, ValueError, "'keypoints'"),
        ([{**good(), "image_id": 3}] * 2, ValueError, r"'image_id'.*int 3.*remove"),
        ([{**good(), "image_id": torch.tensor(3)}] * 2, ValueError, r"'image_id'.*shape \(\)"),
        ([{**good(), "area": torch.ones(2)}] * 2, ValueError, r"'area'.*number of boxes \(1\)"),
        (
            [{**good(), "area": torch.ones(1)}, {**good(), "area": torch.ones(1, 2)}],
            ValueError,
            r"same dtype and shape",
        ),
    ],
)
def test_malformed_targets_are_refused_with_the_key_named(targets, error, match):
    with pytest.raises(error, match=match):
        check_detection_targets(targets, 2)
    if error is ValueError and isinstance(targets, list) and len(targets) == 2:
        params = make_policy(1.0, 0.0).sample((2, 1, 4, 4), np.random.default_rng(0))
        with pytest.raises(error, match=match):
            mix_detection_targets(targets, params, [(4, 4)] * 2)


@pytest.mark.parametrize("fmt", ["XYWH", "CXCYWH"])
def test_torchvision_boxes_in_another_format_are_refused_and_xyxy_ones_mix_as_tensors(fmt):
    from torchvision import tv_tensors

    def targets(form):
        return [
            {"boxes": form([[4.0, 4.0, 10.0, 12.0]]), "labels": torch.tensor([k])} for k in (1, 2)
        ]

    def boxes_as(fmt):
        return lambda rows: tv_tensors.BoundingBoxes(rows, format=fmt, canvas_size=(16, 16))

    images = torch.rand(2, 1, 16, 16)
    params = make_policy(0.0, 1.0).sample(detection_shape(images), np.random.default_rng(0))
    with pytest.raises(ValueError, match=rf'targets\[0\]\["boxes"\] are {fmt} boxes.*box_convert'):
        mix_detection(images, targets(boxes_as(fmt)), params)
    _, mixed = mix_detection(images, targets(boxes_as("XYXY")), params)
    _, plain = mix_detection(images, targets(torch.tensor), params)
    for a, b in zip(mixed, plain):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "bad, match",
    [
        (box(2, 0, 2, 2), r'targets\[1\]\["boxes"\]\[0\] = \[2.0, 0.0, 2.0, 2.0\].*x1 < x2'),
        (box(0, 3, 2, 1), "y1 < y2"),
        (box(-1, 0, 2, 2), "0 ≤ x1"),
        (box(0, 0, 9, 2), r"x2 ≤ 8.*clip_boxes_to_image"),
        (box(0, 0, 2, 7), r"6×8 image"),
        ([0.0, 0.0, float("nan"), 2.0], "finite"),
    ],
)
def test_invalid_boxes_are_refused_with_the_image_and_box_named(bad, match):
    targets = [good(), {"boxes": torch.tensor([bad]), "labels": torch.ones(1, dtype=torch.long)}]
    with pytest.raises(ValueError, match=match):
        check_detection_batch(torch.zeros(2, 1, 6, 8), targets)
    assert (
        check_detection_batch(torch.zeros(2, 1, 6, 8), targets, check_values=False) == [(6, 8)] * 2
    )


def test_a_box_is_checked_in_its_own_dtype_when_the_targets_mix_dtypes():
    # 8.001 rounds to 8.0 in float16: checked in the first target's dtype, the box passed.
    half = {
        "boxes": torch.tensor([box(0, 0, 2, 2)], dtype=torch.float16),
        "labels": good()["labels"],
    }
    outside = {"boxes": torch.tensor([[0.0, 0.0, 8.001, 2.0]]), "labels": good()["labels"]}
    with pytest.raises(ValueError, match=r'targets\[1\]\["boxes"\]\[0\].*x2 ≤ 8'):
        check_detection_batch(torch.zeros(2, 1, 6, 8), [half, outside])
    assert check_detection_batch(torch.zeros(2, 1, 6, 8), [half, good()]) == [(6, 8)] * 2
    # The image's width rounds too: 2051 is 2052 as float16, so a box ending at 2052 passed.
    wide = {"boxes": torch.tensor([[0.0, 0.0, 2052.0, 2.0]], dtype=torch.float16)}
    with pytest.raises(ValueError, match=r'targets\[0\]\["boxes"\]\[0\].*x2 ≤ 2051'):
        check_detection_batch(torch.zeros(1, 1, 6, 2051), [{**wide, "labels": good()["labels"]}])


def test_malformed_images_and_params_are_refused():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor.*shape \(2, 4, 4\)"):
        image_sizes(torch.zeros(2, 4, 4))
    with pytest.raises(TypeError, match="list of"):
        image_sizes("images")
    with pytest.raises(ValueError, match=r"floating point \(C, H, W\).*position 1"):
        image_sizes([torch.zeros(1, 4, 4), torch.zeros(4, 4)])
    with pytest.raises(ValueError, match="same number of channels: image 0 has 1, image 1 has 3"):
        image_sizes([torch.zeros(1, 4, 4), torch.zeros(3, 4, 4)])
    with pytest.raises(ValueError, match="at least one image"):
        detection_shape([])
    targets = [good(), good()]
    params = make_policy(1.0, 0.0).sample((3, 1, 4, 4), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"drawn for 3 samples but the batch holds 2"):
        mix_detection(torch.zeros(2, 1, 4, 4), targets, params)
    volume = make_policy(0.0, 1.0).sample((2, 1, 4, 4, 4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 spatial dimensions.*drawn for 3"):
        mix_detection_targets(targets, volume, [(4, 4)] * 2)
    with pytest.raises(TypeError, match="`params` must be a MixParams"):
        mix_detection_targets(targets, "params", [(4, 4)] * 2)
    params = make_policy(1.0, 0.0).sample((2, 1, 4, 4), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"`image_sizes` must hold one \(H, W\) per target"):
        mix_detection_targets(targets, params, [(4, 4)])
    for value in (0, 0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"`min_visible` must be a number in"):
            mix_detection_targets(targets, params, [(4, 4)] * 2, min_visible=value)
