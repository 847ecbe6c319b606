"""Image folders are opened and decoded by a pool of threads, in the files' order: any number of
threads gives the same store, the same labels and the same skipped files."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tlbench.datasetlib.common import decode_files


def test_any_number_of_decode_threads_gives_the_same_store(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    paths, labels = [], []
    for i in range(30):
        path = tmp_path / "jpg" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in (4, 17):
            path.write_bytes(b"not an image")
        elif i == 23:  # a header that opens, a body that does not decode
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
            path.write_bytes(path.read_bytes()[:200])
        else:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
        labels.append(i % 3)

    def decoded(threads: int):
        monkeypatch.setenv("TLBENCH_DECODE_THREADS", str(threads))
        out = decode_files(paths, labels, on_corrupt="skip", store_dir=tmp_path / f"s{threads}")
        return out.imageset.images[:], out.imageset.labels.tolist(), out.skipped

    one, four = decoded(1), decoded(4)
    assert np.array_equal(one[0], four[0]) and one[1:] == four[1:]
    assert one[2] == [str(paths[4]), str(paths[17]), str(paths[23])]
    assert len(one[0]) == 27
