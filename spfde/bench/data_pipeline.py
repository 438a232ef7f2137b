"""`python -m spfde.bench data`: the input pipeline of image folders. Writes an ImageNet-like JPEG folder (N train +
N/10 val images of ~400x350 px in 10 classes, cached in outputs/bench-data/) unless dataset.root is given, then, in
one process, prints a table of the bare model's img/s on a random batch already on the device and the harness's
training img/s with each folder loader this device has (pil; gpu and dali on CUDA) as ratios to it, then the epoch
time with 0 and with all candidate blocks frozen for the fastest loader. Each case says what ran (graphed, eager or
a capture's fallback), and each harness case also the loader alone (an epoch of batches moved to the device, no
model) and the step alone (on one batch already on the device): data-bound when the loader alone is the slower.
Every case runs with the same backend settings (printed under the table). Default ResNet-50 at 224, batch 256; CPU
rehearsal: `data --generate 64 --batch-size 16 --steps 3 model=resnet32 model.width=1 model.depth=8
dataset.image_size=32 dataset.workers=2 device=cpu`. `--json PATH` also writes the values and ratios, rewritten
after each measurement (the GPU session's summary reads them); a measurement that fails is reported as not measured
and the others still run (`python -m spfde.bench` then exits with status 1)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import open_dict
from PIL import Image

from spfde.bench.common import (
    Report,
    apply_backend_settings,
    bare_model_img_s,
    bound_by,
    harness_epochs,
    ratio,
    settings_line,
    times,
)
from spfde.checks.validation import validate
from spfde.config import compose_config
from spfde.data.folders import dali_installed, planned_image_size
from spfde.training.build import resolve_device


def write_image(job: tuple[Path, int, int]) -> None:
    """One ~400x350 JPEG of smooth random content (upsampled noise plus fine noise, so files have realistic
    sizes), from its own seed: the folder is the same whatever the number of processes writing it."""
    path, seed, index = job
    rng = np.random.default_rng([seed, index])
    h, w = 350 + int(rng.integers(-30, 31)), 400 + int(rng.integers(-40, 41))
    coarse = Image.fromarray((rng.random((12, 14, 3)) * 255).astype(np.uint8))
    image = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
    image = np.clip(image + rng.standard_normal((h, w, 3), dtype=np.float32) * 12, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path, quality=90)


def generate_folder(root: Path, n: int, seed: int = 0) -> Path:
    """An ImageNet-like JPEG folder: n train and n // 10 val images (at least one per class) in 10 class
    folders, written by one process per CPU core (JPEG encoding is the slow part; forked, so the workers
    import nothing: they use only numpy and PIL). Reused when complete."""
    if (root / ".complete").exists():
        return root
    jobs = []
    for split, count in (("train", n), ("val", max(10, n // 10))):
        for i in range(count):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:06d}.jpg", seed, len(jobs)))
    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(write_image, jobs, chunksize=16)
    (root / ".complete").touch()
    return root


def data_bench(generate: int, batch_size: int, steps: int, extra: list[str], json_path: str | None = None) -> Report:
    """See the module doc; prints each line as soon as it is measured."""
    given = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in extra if "=" in o}
    if given.get("dataset.root"):
        root = Path(given["dataset.root"])
    else:
        start = time.perf_counter()
        root = generate_folder(Path("outputs/bench-data") / f"jpeg-{generate}", generate)
        print(f"(folder {root}: ready in {time.perf_counter() - start:.1f} s)", flush=True)
    base = ["model=resnet50", "dataset=imagefolder", f"dataset.root={root.absolute()}", "epochs=2",
            f"batch_size={batch_size}", "dataset.in_memory=false",
            f"dataset.num_classes={len([p for p in (root / 'train').iterdir() if p.is_dir()])}"]
    base = [o for o in base if o.split("=", 1)[0] not in given] + extra
    cfg = compose_config(["logger=none", *base])
    with open_dict(cfg):
        cfg.dataset.image_size = planned_image_size(cfg.dataset)
    base.append(f"dataset.image_size={cfg.dataset.image_size}")
    validate(cfg)
    device = resolve_device(cfg.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = Report(json_path)
    report.emit(f"# spfde.bench data on {card}, torch {torch.__version__}: {cfg.model.name}, batch {batch_size}, "
                f"{cfg.dataset.image_size}px, {cfg.dataset.workers} workers, folder {root}, overrides {extra}")
    report.record(device=card, torch=torch.__version__, model=cfg.model.name, batch_size=batch_size,
                  workers=cfg.dataset.workers)
    settings = apply_backend_settings(cfg)  # what every case below sets for itself; printed once, under the table
    report.record(settings=settings)
    report.emit("| what | img/s | vs bare model | ran | loader alone img/s | step alone img/s | bound |\n"
                "|---|---|---|---|---|---|---|")
    bare = report.attempt("bare model, random batch on the device", bare_model_img_s, cfg, batch_size, steps, False)
    bare_img_s = bare and bare["img_s"]
    case_settings = {"bare": bare["settings"]} if bare else {}
    if bare:
        report.emit(f"| bare model, random batch on the device | {bare_img_s:,.0f} | 1.00x | {bare['ran']} | | | |")
        report.record(bare_img_s=bare_img_s, bare_ran=bare["ran"])
    loaders = ["pil"] + (["gpu"] + (["dali"] if dali_installed() else []) if device.type == "cuda" else [])
    runs = {}
    for loader in loaders:
        r = report.attempt(f"harness, dataset.loader={loader}", harness_epochs, [*base, f"dataset.loader={loader}"],
                           0, False, steps)
        if r is None:
            continue
        runs[loader] = r
        case_settings[f"loader_{loader}"] = r["settings"]
        report.emit(harness_row(f"harness, dataset.loader={loader} ({r['samples']} images, epoch 2)", r, bare_img_s))
        vs_bare = ratio(r["img_s"], bare_img_s)
        report.record(**{f"loader_{loader}_img_s": r["img_s"], f"loader_{loader}_vs_bare": vs_bare},
                      **bound_values(f"loader_{loader}", r))
    best = max(runs, key=lambda k: runs[k]["img_s"]) if runs else None
    frozen = None
    if best:
        frozen = report.attempt(f"dataset.loader={best} with all candidate blocks frozen", harness_epochs,
                                [*base, f"dataset.loader={best}"], "all", False, steps)
    if frozen:
        case_settings["frozen"] = frozen["settings"]
        report.emit(harness_row(f"harness, dataset.loader={best}, all {frozen['candidates']} candidate blocks frozen",
                                frozen, bare_img_s))
        report.record(**bound_values("frozen", frozen))
    report.emit(settings_line(settings, case_settings))
    report.record(settings_by_case=case_settings)
    if frozen:
        unfrozen_s, frozen_s = runs[best]["train_s"], frozen["train_s"]
        speedup = unfrozen_s / frozen_s
        report.emit(f"\nfastest loader: {best}; epoch time with 0 frozen blocks {unfrozen_s:.2f} s, with all "
                    f"{frozen['candidates']} candidate blocks frozen {frozen_s:.2f} s (speed-up {speedup:.2f}x; "
                    f"{frozen['ran']} / {runs[best]['ran']})")
        report.record(fastest_loader=best, frozen_epoch_speedup=speedup)
    return report


def harness_row(label: str, r: dict, bare_img_s: float | None) -> str:
    """A harness case's row: img/s, its ratio to the bare model, what ran, the loader alone and the step alone."""
    return (f"| {label} | {r['img_s']:,.0f} | {times(r['img_s'], bare_img_s)} | {r['ran']} | "
            f"{r['loader_img_s']:,.0f} | {r['step_img_s']:,.0f} | {bound_by(r['loader_img_s'], r['step_img_s'])} |")


def bound_values(key: str, r: dict) -> dict:
    return {f"{key}_ran": r["ran"], f"{key}_loader_only_img_s": r["loader_img_s"],
            f"{key}_step_only_img_s": r["step_img_s"], f"{key}_bound": bound_by(r["loader_img_s"], r["step_img_s"])}
