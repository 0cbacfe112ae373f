import json
import os

import numpy as np
import pytest
from PIL import Image

from tfcaption.data import synthetic

COUNTS = (12, 4, 4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    synthetic.generate(str(root), seed=3, counts=COUNTS, image_size=96, workers=1)
    return root


def test_deterministic_from_the_seed(world, tmp_path):
    synthetic.generate(str(tmp_path / "again"), seed=3, counts=COUNTS, image_size=96)
    for split in synthetic.SPLITS:
        assert (world / f"{split}.jsonl").read_text() == \
            (tmp_path / "again" / f"{split}.jsonl").read_text()
    name = "images/train/train_000005.png"
    assert (world / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    # Rendered in worker processes (the demo's way), not in this one: the same files.
    synthetic.generate(str(tmp_path / "pool"), seed=3, counts=COUNTS, image_size=96, workers=2)
    for path in sorted(world.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "pool" / path.relative_to(world)).read_bytes()
    other = synthetic.render(4, 0, 5, 96)[0]
    assert not np.array_equal(other, synthetic.render(3, 0, 5, 96)[0])
    # Split sizes do not change the other splits' images.
    bigger = synthetic.render(3, 1, 2, 96)
    assert np.array_equal(bigger[0], np.asarray(Image.open(world / "images/val/val_000002.png")))


def test_boxes_are_tight_and_hold_the_object_colour(world):
    for ex in synthetic.read_split(str(world), "train"):
        pixels = np.asarray(Image.open(ex.image)).astype(int)
        size = pixels.shape[0]
        for box in ex.boxes:
            assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
            # The centre of a circle, square or star is the object's colour; a
            # triangle's centroid sits lower than its box centre.
            cx = (box.x0 + box.x1) / 2
            cy = (box.y0 + box.y1) / 2 + (0.15 * (box.y1 - box.y0) if box.label == "triangle" else 0)
            colour = pixels[int(cy * size), int(cx * size)]
            names = [c for c, rgb in synthetic.COLOURS.items()
                     if np.abs(colour - np.array(rgb)).max() < 40]
            assert len(names) == 1 and any(names[0] in c for c in ex.captions)
            # Just outside the box there is background, not the object.
            outside = pixels[int(cy * size), min(int(box.x1 * size) + 2, size - 1)]
            assert np.abs(outside - colour).max() > 10 or box.x1 > 0.97


def test_every_caption_names_every_shape_and_relations_are_true(world):
    for ex in synthetic.read_split(str(world), "train"):
        assert len(ex.captions) == 5
        for caption in ex.captions:
            for box in ex.boxes:
                assert box.label in caption.split()
        boxes = {b.label: b for b in ex.boxes}
        for caption in ex.captions:
            words = caption.split()
            for relation in ("left", "right", "above", "below"):
                if relation not in words or "the" in words:  # "in the top left": a region
                    continue
                i = words.index(relation)
                before = [w for w in words[:i] if w in boxes][-1]
                after = [w for w in words[i:] if w in boxes][0]
                a, b = boxes[before], boxes[after]
                centre = lambda box, k: (getattr(box, f"{k}0") + getattr(box, f"{k}1")) / 2  # noqa
                axis = "x" if relation in ("left", "right") else "y"
                sign = -1 if relation in ("left", "above") else 1
                assert sign * (centre(a, axis) - centre(b, axis)) > 0, caption


def test_second_generation_touches_nothing(world):
    stamp = {p: os.path.getmtime(p) for p in world.rglob("*") if p.is_file()}
    synthetic.generate(str(world), seed=3, counts=COUNTS, image_size=96)
    assert stamp == {p: os.path.getmtime(p) for p in world.rglob("*") if p.is_file()}


def test_interrupted_generation_is_redone(tmp_path):
    root = tmp_path / "w"
    synthetic.generate(str(root), seed=1, counts=(3, 2, 2), image_size=64)
    (root / "world.json").unlink()  # as if killed before the marker was written
    (root / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="tfcaption generate"):
        synthetic.read_split(str(root), "test")
    summary = synthetic.generate(str(root), seed=1, counts=(3, 2, 2), image_size=64)
    assert summary["test"] == 2 and len(synthetic.read_split(str(root), "test")) == 2
    assert json.loads((root / "world.json").read_text())["seed"] == 1
