"""Throughput of every corruption, in images per second, at the sizes the pipelines use.

Two image sets: the digits (8x8 grey floats, the whole data set) and street-scene-sized colour
images (128x416x3 uint8, the synthetic world's default camera), textured with smoothed noise so
that blur and JPEG do real work. Each corruption runs at severity 3 (blur kernels grow with
severity: severity 5 is also timed for the blurs); stereo pairs are timed through
``corrupt_pair`` (two views per pair, reported per view).

    python experiments/bench_corruptions.py [--repeats 3] [--street 32]
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from entangle.analysis.corruptions import CORRUPTIONS, corrupt, corrupt_pair


def street_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = (rng.random((n, 128, 416, 3)) * 255).astype(np.uint8)
    return np.stack([cv2.GaussianBlur(im, (9, 9), 3.0) for im in raw])


def images_per_second(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up (kernel caches, OpenCV initialisation)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--street", type=int, default=32, help="number of street-sized images")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    from sklearn.datasets import load_digits
    digits = load_digits().images.astype(np.float32) / 16.0
    street = street_images(args.street)
    print(f"digits: {digits.shape} float32; street: {street.shape} uint8; best of {args.repeats}; "
          f"one OpenCV thread")
    print(f"{'corruption':<18}{'sev':>4}{'digits img/s':>15}{'street img/s':>15}{'street pair views/s':>22}")
    for name, c in CORRUPTIONS.items():
        for sev in ((3, 5) if c.family == "blur" else (3,)):
            if c.stereo_only:
                d = s = float("nan")
            else:
                d = images_per_second(lambda: corrupt(digits, name, sev), len(digits), args.repeats)
                s = images_per_second(lambda: corrupt(street, name, sev), len(street), args.repeats)
            p = images_per_second(lambda: corrupt_pair(street, street, name, sev), 2 * len(street), args.repeats)
            print(f"{name:<18}{sev:>4}{d:>15,.0f}{s:>15,.0f}{p:>22,.0f}")


if __name__ == "__main__":
    main()
