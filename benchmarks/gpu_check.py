"""GPU path check: teacher-cache and student-step throughput, fp32 vs bf16 (CUDA only).

Runs the real code paths (``trainers.loop.train``, ``trainers.cache.ensure_cache``) on the
CUDA device with a random-init open_clip ViT-B-32 teacher (cost does not depend on the
weights; nothing is downloaded) and a ResNet-18 student, and prints images per second:

* teacher forward at 224 px (what building the teacher cache costs), fp32 vs bf16;
* the teacher cache build itself (K views of every training image);
* the student's training epoch (forward + backward + step, targets read from the cache),
  fp32 vs bf16 autocast + channels_last.

    python benchmarks/gpu_check.py [--images-per-class 100] [--student-size 224]

Ray is not needed (the GPU machines here cannot install it); the sweep path on GPU is the
same loop inside a Tune trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch


def timed(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-per-class", type=int, default=100)
    ap.add_argument("--student-size", type=int, default=224)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    from vldistill.platform.cli import load_train_config
    from vldistill.trainers.cache import ensure_cache
    from vldistill.trainers.loop import LogReporter, _MEMO, prepare, train

    cache = tempfile.mkdtemp(prefix="vldistill-gpu-")
    base = ["teacher=open_clip", "teacher.name=ViT-B-32", "teacher.pretrained=null", "device=cuda",
            f"cache_dir={cache}", "progress=false", f"augment.views={args.views}",
            f"data.images_per_class={args.images_per_class}", "data.world.per_class=220",
            "data.max_eval_per_class=20", f"student.image_size={args.student_size}",
            f"optim.batch_size={args.batch}", f"optim.epochs={args.epochs}", f"eval.every={args.epochs}",
            "eval.latency_iters=3"]
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.perf_counter()
    cfg = load_train_config([*base, "teacher_cache=false"])
    splits, teacher, _, _ = prepare(cfg)  # world, teacher, teacher metrics (no cache yet)
    out["prepare_s"] = time.perf_counter() - t0
    teacher.cuda()
    x = torch.rand(args.batch, 3, 32, 32, device="cuda")
    for prec in ("fp32", "bf16"):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if prec == "bf16" else torch.autocast("cuda", enabled=False)
        with ctx:
            s = timed(lambda: teacher.encode_images(x))
        out[f"teacher_forward_img_per_s/{prec}"] = args.batch / s
    n = len(splits.train)
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ensure_cache(teacher, splits, cfg.data.image_size, cfg.augment, args.views,
                     __import__("pathlib").Path(cache), progress=False)
    torch.cuda.synchronize()
    build = time.perf_counter() - t0
    out["teacher_cache_build_s"] = build
    out["teacher_cache_img_per_s/bf16"] = n * args.views / build
    for label, extra in (("fp32", []), ("bf16+channels_last", ["precision=bf16", "channels_last=true"])):
        _MEMO.clear()
        rep = LogReporter()
        train(load_train_config([*base, *extra]), rep, None)
        secs = [r["train_seconds"] for r in rep.history[1:]] or [rep.history[0]["train_seconds"]]
        out[f"student_step_img_per_s/{label}"] = (n // args.batch) * args.batch / statistics.mean(secs)
        out[f"novel_acc/{label}"] = rep.history[-1]["novel_acc"]
    out["train_images"] = n
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
