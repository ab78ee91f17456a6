"""Aspect-ratio buckets: the bucket set, assignments and crops worked out by hand from kohya's
rules, crop_to_bucket's pixels, and the `bucket` job end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import BucketConfig
from core.dataset import buckets
from core.dataset.buckets import BucketAssignment, assign_bucket, crop_to_bucket, make_buckets
from core.dataset.images import ImageError
from core.jobs.protocol import JobContext, JobStopped
from core.jobs.run_folder import RunFolder

# 512,512 / 256..1024 / step 64: area 262144. Square: floor(512 / 64) * 64 = 512. For each width
# w = 256, 320, ..., 1024: h = min(1024, floor((262144 // w) / 64) * 64), kept as (w,h) and (h,w):
#   256 -> 1024//64*64 = 1024    320 -> 819 -> 768     384 -> 682 -> 640    448 -> 585 -> 576
#   512 -> 512                   576 -> 455 -> 448     640 -> 409 -> 384    704 -> 372 -> 320
#   768 -> 341 -> 320            832 -> 315 -> 256     896 -> 292 -> 256    960 -> 273 -> 256
#   1024 -> 256
SD15_BUCKETS = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768),
                (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320),
                (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256)]
SD15 = dict(resolution=(512, 512), step=64)


def test_sd15_bucket_set_matches_hand_list():
    assert make_buckets((512, 512), 256, 1024, 64) == SD15_BUCKETS


def test_sdxl_bucket_set_members():
    # 1024,1024 / 256..2048 / 64: area 1048576; 832 -> 1260 -> 1216, 896 -> 1170 -> 1152,
    # 768 -> 1365 -> 1344, 640 -> 1638 -> 1600, 1536 -> 682 -> 640, 960 -> 1092 -> 1088.
    found = make_buckets((1024, 1024), 256, 2048, 64)
    for member in [(1024, 1024), (832, 1216), (1216, 832), (896, 1152), (1152, 896),
                   (768, 1344), (640, 1600), (1536, 640), (640, 1536), (960, 1088)]:
        assert member in found
    assert (1088, 1088) not in found and (1024, 1088) not in found
    assert all(w * h <= 1024 * 1024 and w % 64 == 0 and h % 64 == 0 for w, h in found)
    assert found == sorted(set(found))


def test_bucket_set_non_square_resolution_and_odd_area():
    # 640,384: area 245760, square floor(495.7 / 64) * 64 = 448; max 640 bounds every side.
    found = make_buckets((640, 384), 256, 640, 64)
    assert (448, 448) in found and (640, 384) in found and (384, 640) in found
    assert max(max(b) for b in found) == 640


# (size) -> (bucket, resized, crop) with upscaling allowed, on SD15_BUCKETS.
UPSCALE_TABLE = {
    # ar 1 -> 512x512; 1 > 1 is false: fit width, scale 0.512
    (1000, 1000): ((512, 512), (512, 512), (0, 0, 512, 512)),
    # ar 0.75, nearest 448x576 (0.778); fit width, scale 448/600: h = int(597.33 + .5) = 597,
    # top = (597 - 576) // 2 = 10
    (600, 800): ((448, 576), (448, 597), (0, 10, 448, 586)),
    # ar 1.778, nearest 640x384 (1.667); wider: fit height, scale 384/1080: w = int(682.67 + .5)
    # = 683, left = 43 // 2 = 21
    (1920, 1080): ((640, 384), (683, 384), (21, 0, 661, 384)),
    # 1:4 is exactly 256x1024's ratio: fit width, scale 1.024, nothing cropped
    (250, 1000): ((256, 1024), (256, 1024), (0, 0, 256, 1024)),
    # 5:1, nearest 1024x256 (4); wider: fit height, scale 1.28: w = 1280, left = 128
    (1000, 200): ((1024, 256), (1280, 256), (128, 0, 1152, 256)),
    # tiny: upscaled 8x to the square bucket
    (64, 64): ((512, 512), (512, 512), (0, 0, 512, 512)),
    # ar 1.5, nearest 640x384 (1.667 vs 1.286); fit width, scale 640/6000: h = int(426.67 + .5)
    # = 427, top = 43 // 2 = 21
    (6000, 4000): ((640, 384), (640, 427), (0, 21, 640, 405)),
    # exactly a bucket: kept as is
    (448, 576): ((448, 576), (448, 576), (0, 0, 448, 576)),
}

# The same with bucket_no_upscale (area 262144, step 64).
NO_UPSCALE_TABLE = {
    # over the area, ar 1: sqrt(262144) = 512 both ways, tie -> height-rounded: 512x512
    (1000, 1000): ((512, 512), (512, 512), (0, 0, 512, 512)),
    # ar .75: exact 443.4 x 591.2. Width 443 -> 384, height 384/.75 = 512 (ar .75, error 0);
    # height 591 -> 576, width 432 -> 384 (ar .667). Width wins: 384 x int(512 + .5)
    (600, 800): ((384, 512), (384, 512), (0, 0, 384, 512)),
    # ar 16/9: exact 682.67 x 384. Width 683 -> 640, height 360 -> 320 (ar 2, error .222);
    # height 384, width 683 -> 640 (ar 1.667, error .111). Height wins: int(682.67 + .5) = 683
    (1920, 1080): ((640, 384), (683, 384), (21, 0, 661, 384)),
    # ar 10/7: exact 611.96 x 428.37. Width 612 -> 576, height 403 -> 384 (ar 1.5, error .071);
    # height 428 -> 384, width 549 -> 512 (ar 1.333, error .095). Width wins: 576 x int(403.2 + .5)
    # = 403, bucket 576x384, top = 19 // 2 = 9
    (1000, 700): ((576, 384), (576, 403), (0, 9, 576, 393)),
    # under the area: kept, bucket floored to 64: 192x960, left 58 // 2 = 29, top 40 // 2 = 20
    (250, 1000): ((192, 960), (250, 1000), (29, 20, 221, 980)),
    # 1:4 over the area: exact 256 x 1024, both roundings agree
    (400, 1600): ((256, 1024), (256, 1024), (0, 0, 256, 1024)),
    # ar .2496: exact 255.79 x 1024.85. Width 256, height 1025.7 -> 1024 (ar .25); height
    # 1025 -> 1024, width 255.57 -> 256 (ar .25). A tie goes to the height: int(255.57 + .5) x 1024
    # (the width would give 256 x int(1025.7 + .5) = 1026)
    (300, 1202): ((256, 1024), (256, 1024), (0, 0, 256, 1024)),
    (64, 64): ((64, 64), (64, 64), (0, 0, 64, 64)),
    # ar 1.5: exact 627.06 x 418.04 -> width 576 / height 384 both give 576x384 exactly
    (6000, 4000): ((576, 384), (576, 384), (0, 0, 576, 384)),
    (448, 576): ((448, 576), (448, 576), (0, 0, 448, 576)),
}


@pytest.mark.parametrize("size", UPSCALE_TABLE)
def test_assign_with_upscale(size):
    assert assign_bucket(size, SD15_BUCKETS, no_upscale=False, **SD15) == UPSCALE_TABLE[size]


@pytest.mark.parametrize("size", NO_UPSCALE_TABLE)
def test_assign_without_upscale(size):
    assert assign_bucket(size, SD15_BUCKETS, no_upscale=True, **SD15) == NO_UPSCALE_TABLE[size]


def test_exact_size_beats_a_same_ratio_bucket_and_ties_take_the_first():
    two_squares = [(512, 512), (1024, 1024)]
    assert assign_bucket((1024, 1024), two_squares, no_upscale=False, **SD15)[0] == (1024, 1024)
    assert assign_bucket((1000, 1000), two_squares, no_upscale=False, **SD15)[0] == (512, 512)
    # ar 1.25 is .75 away from both 0.5 and 2.0: the first (sorted) wins, as np.argmin.
    # Wider than 256x512: fit height (scale 1), left = (640 - 256) // 2 = 192
    tie = [(256, 512), (512, 256)]
    assert assign_bucket((640, 512), tie, no_upscale=False, **SD15) == (
        (256, 512), (640, 512), (192, 0, 448, 512))


def test_no_upscale_rejects_an_image_narrower_than_the_step():
    with pytest.raises(ValueError, match="bucket_reso_steps"):
        assign_bucket((100, 40), SD15_BUCKETS, no_upscale=True, **SD15)
    with pytest.raises(ValueError, match="bucket_reso_steps"):  # 100:1, shrunk to 5120 x 51
        assign_bucket((20000, 200), SD15_BUCKETS, no_upscale=True, **SD15)


def _assignment(size):
    bucket, resized, crop = assign_bucket(size, SD15_BUCKETS, no_upscale=False, **SD15)
    return BucketAssignment(Path("x.png"), size, bucket, resized, crop, 1)


def test_crop_to_bucket_keeps_the_centre():
    # 1024x512, ar 2 -> 704x320 (2.2); fit width, scale .6875: 704x352, top 16. Red bands of 23
    # rows at the top and bottom end at resized rows 15.8 and start at 336.2: all cut away.
    pixels = np.zeros((512, 1024, 3), np.uint8)
    pixels[:, :, 2] = 255
    pixels[:23] = pixels[-23:] = (255, 0, 0)
    a = _assignment((1024, 512))
    assert (a.bucket, a.resized, a.crop) == ((704, 320), (704, 352), (0, 16, 704, 336))
    out = np.asarray(crop_to_bucket(Image.fromarray(pixels), a)).astype(int)
    assert out.shape == (320, 704, 3)
    assert out[..., 0].max() <= 8 and out[..., 2].min() >= 247


def test_crop_to_bucket_exact_pixels_without_resize():
    # A 300x100 image with a red stripe in columns 100..199, cropped (not resized) to its centre.
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, 100:200] = (255, 0, 0)
    a = BucketAssignment(Path("x.png"), (300, 100), (100, 100), (300, 100), (100, 0, 200, 100), 1)
    out = np.asarray(crop_to_bucket(Image.fromarray(pixels), a))
    assert out.shape == (100, 100, 3) and (out == (255, 0, 0)).all()


def test_crop_to_bucket_filters_area_down_lanczos_up():
    # Shrinking 1024 -> 512 averages each 2x2 block (kohya's INTER_AREA); enlarging is Lanczos.
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    out = np.asarray(crop_to_bucket(Image.fromarray(noise), _assignment((1024, 1024))))
    blocks = noise.reshape(512, 2, 512, 2, 3).mean(axis=(1, 3))
    assert np.abs(out - blocks).max() <= 1
    small = Image.fromarray(noise[:64, :64])
    enlarged = crop_to_bucket(small, _assignment((64, 64)))
    assert np.array_equal(np.asarray(enlarged), np.asarray(small.resize((512, 512), Image.LANCZOS)))


def test_crop_to_bucket_refuses_a_changed_image():
    a = _assignment((600, 800))
    with pytest.raises(ImageError, match="size changed"):
        crop_to_bucket(Image.new("RGB", (800, 600)), a)
    assert crop_to_bucket(Image.new("RGB", (600, 800)), a).size == (448, 576)
    assert BucketAssignment.from_dict(json.loads(json.dumps(a.as_dict()))) == \
        BucketAssignment(a.path, (600, 800), (448, 576), (448, 597), (0, 10, 448, 586), 1)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    files = {"5_cat/a.png": (600, 800), "5_cat/b.png": (1920, 1080), "5_cat/c.png": (1000, 1000),
             "plain/d.png": (64, 64), "plain/e.jpg": (640, 360)}
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 120, 30)).save(root / name)
    (root / "plain" / "broken.png").write_text("not an image")
    (root / "0_off").mkdir()
    Image.new("RGB", (512, 512)).save(root / "0_off" / "z.png")
    return root


def _cfg(root, **kw):
    return BucketConfig(train_data_dir=[str(root)], train_batch_size=2, **kw)


def test_bucket_job_writes_the_plan(dataset, tmp_path):
    with JobContext(tmp_path / "run", echo=False) as ctx:
        result = buckets.run(_cfg(dataset), ctx)
    plan = json.loads((tmp_path / "run" / "buckets.json").read_text())
    by_name = {e["path"].rsplit("/", 1)[-1]: e for e in plan["images"]}
    assert sorted(by_name) == ["a.png", "b.png", "c.png", "d.png", "e.jpg"]
    assert by_name["a.png"] == {"path": str(dataset / "5_cat" / "a.png"), "original": [600, 800],
                                "bucket": [448, 576], "resized": [448, 597],
                                "crop": [0, 10, 448, 586], "repeats": 5}
    # 640x360 is 16:9 like b: 640x384 after resizing to 683x384 (scale 384/360)
    assert by_name["e.jpg"]["bucket"] == [640, 384] and by_name["e.jpg"]["resized"] == [683, 384]
    assert plan["buckets"] == [{"bucket": [448, 576], "images": 1, "effective": 5},
                               {"bucket": [512, 512], "images": 2, "effective": 6},
                               {"bucket": [640, 384], "images": 2, "effective": 6}]
    assert {b["path"].rsplit("/", 1)[-1] for b in plan["broken"]} == {"broken.png", "0_off"}
    s = plan["summary"]
    assert (s["images"], s["buckets_used"], s["upscaled"]) == (5, 3, 2)  # d: 8x, e: 1.07x
    # crop loss: a 21/597, b and e 43/683, c and d 0
    assert s["mean_crop_loss"] == pytest.approx((21 / 597 + 2 * 43 / 683) / 5, abs=1e-6)
    assert s["small_buckets"] == [[448, 576]]
    assert [p.rsplit("/", 1)[-1] for p in s["strong_upscale"]] == ["d.png"]
    assert [p.rsplit("/", 1)[-1] for p in s["tiny_images"]] == ["d.png"]
    assert plan["complete"] is True and plan["settings"]["train_batch_size"] == 2
    assert result == {"complete": True, "images": 5, "buckets_used": 3, "broken": 2,
                      "upscaled": 2, "mean_crop_loss": s["mean_crop_loss"]}
    events = RunFolder(tmp_path / "run").read_events()
    assert sum(e["event"] == "warning" for e in events) == 2
    # the last event: progress over all 6 image files, broken.png included
    assert events[-1] == {**events[-1], "event": "progress", "step": 6, "total": 6}
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "512x512: 2 images (6 with repeats)" in log and "448x576" in log


def test_bucket_job_no_upscale_adds_buckets(dataset, tmp_path):
    with JobContext(tmp_path / "run", echo=False) as ctx:
        buckets.run(_cfg(dataset, bucket_no_upscale=True), ctx)
    plan = json.loads((tmp_path / "run" / "buckets.json").read_text())
    assert [b["bucket"] for b in plan["buckets"]] == [[64, 64], [384, 512], [512, 512],
                                                      [640, 320], [640, 384]]
    assert plan["summary"]["upscaled"] == 0


class StopAfter(JobContext):
    def __init__(self, run_dir, checks):
        super().__init__(run_dir, echo=False)
        self.checks = checks

    def check_stop(self):
        self.checks -= 1
        if self.checks < 0:
            raise JobStopped()


def test_stopped_job_writes_a_partial_plan(dataset, tmp_path):
    with StopAfter(tmp_path / "run", checks=2) as ctx:
        result = buckets.run(_cfg(dataset), ctx)
    plan = json.loads((tmp_path / "run" / "buckets.json").read_text())
    assert result["complete"] is False and plan["complete"] is False
    assert [e["path"].rsplit("/", 1)[-1] for e in plan["images"]] == ["a.png", "b.png"]
    with pytest.raises(JobStopped):
        buckets.plan_buckets(_cfg(dataset), StopAfter(tmp_path / "run2", checks=0))
    assigned, skipped = buckets.plan_buckets(_cfg(dataset))
    assert len(assigned) == 5 and len(skipped) == 2
