"""``rtdecode bench gpu``: every GPU figure at once, measured so the numbers can be trusted, beside the projections.

- Weights are made and initialised on the device (``build_on_device``): no 4.8 billion parameters
  initialised on the host first.
- The live decode path is timed as the decoder runs it: ``Decoder.decode`` with its own generator on the
  device, end to end, and its stages (the decoder's own stage clocks, synchronised), median of
  ``repeats`` after ``warmup`` untimed runs.
- Calibration is the real trainer loop (``calibration.trainer.train``, the fast path) on one session's
  worth of random data; the steady step is timed between the loop's own read-backs, after the first.
- The peak memory is reset before each stage's timed part and read after it.

Without CUDA and without ``device``: the projections only, said so in one line. With ``device="cpu"`` and
small ``sizes``, every line that does not need CUDA runs (tests/test_gpu_bench.py).
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.devices import build_on_device
from models.mindeye2.config import MindEye2Config

TARGETS = {"brain_to_tokens_ms": 200.0, "tokens_to_image_ms": 2000.0, "decoder_memory_gb": 24.0, "recipe_min": 10.0}


@dataclass
class Sizes:
    """What is built: the published sizes by default; a test passes tiny ones."""

    config: MindEye2Config = field(default_factory=MindEye2Config)  # 4096 hidden, 15,724 voxels, blurry branch
    unet: object = None  # a models.unclip.convert.UNetLayout; None: the published layout
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    unclip_steps: int = 38
    image_size: int = 768
    gallery: int = 300
    trials: int = 750  # one session: 31 steps an epoch at batch 24, as the one-hour recipe
    batch: int = 24


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _mindeye2(config: MindEye2Config, device: torch.device, dtype: torch.dtype, seed: int):
    from models.mindeye2.model import MindEye2

    return build_on_device(lambda: MindEye2(config), device, dtype, seed)


def bench_decode(sizes: Sizes, device: torch.device, dtype: torch.dtype, repeats: int = 5, warmup: int = 2,
                 seed: int = 0) -> dict:
    """``Decoder.decode`` end to end (brain -> retrieval and prior tokens -> unCLIP image) and its stages."""
    from models.unclip.convert import UNetLayout
    from models.unclip.pipeline import UnclipReconstructor, UnclipSettings, build_modules
    from rtdecode.decoder.core import Decoder

    _reset_peak(device)
    t0 = time.perf_counter()
    model = _mindeye2(sizes.config, device, dtype, seed)
    unet, vae = build_on_device(lambda: torch.nn.ModuleList(build_modules(sizes.unet or UNetLayout(), sizes.vae_channels,
                                                                          device=device)), device, dtype, seed + 1)
    vae.encoder, vae.quant_conv = None, None  # reconstruction only decodes
    rec = UnclipReconstructor(unet, vae, UnclipSettings(steps=sizes.unclip_steps, size=sizes.image_size))
    rng = np.random.default_rng(seed)
    c = sizes.config
    gallery = rng.standard_normal((sizes.gallery, c.clip_tokens, c.clip_dim), dtype=np.float32)
    decoder = Decoder(model, c.subjects[0], None, [f"g{i}" for i in range(sizes.gallery)], gallery, unclip=rec,
                      seed=seed)
    del gallery
    _sync(device)
    setup_s = time.perf_counter() - t0
    _reset_peak(device)  # from here: the weights held plus what decoding needs, not the fp32 build before the cast
    beta = rng.standard_normal(c.voxels[0], dtype=np.float32)
    for _ in range(warmup):
        decoder.decode(beta)
    stages: dict[str, list[float]] = {}
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        ret, image = decoder.decode(beta)
        _sync(device)
        stages.setdefault("decode_ms", []).append((time.perf_counter() - t) * 1e3)
        for name, ms in ret.timings_ms.items():
            stages.setdefault(name, []).append(ms)
    medians = {f"{name}_median": float(np.median(v)) for name, v in stages.items()}
    brain = [sum(v) for v in zip(stages["backbone_ms"], stages["retrieval_ms"], stages["prior_ms"], strict=True)]
    result = {"setup_s": setup_s, "repeats": repeats, "warmup": warmup, "image_shape": list(image.shape),
              "params": sum(p.numel() for m in (model, unet, vae) for p in m.parameters()), **medians,
              "brain_to_tokens_ms_median": float(np.median(brain)),
              "tokens_to_image_ms_median": medians["reconstruction_ms_median"], "peak_memory_gb": _peak_gb(device)}
    del decoder, model, unet, vae, rec
    return result


def bench_train(sizes: Sizes, device: torch.device, steps: int = 50, log_every: int = 10, seed: int = 0) -> dict:
    """The calibration trainer's own loop (fast path) for about ``steps`` steps on random data of one session;
    the steady step is the time between the loop's read-backs, after the first (optimiser state, autotuning)."""
    from calibration.data import SubjectData
    from calibration.trainer import TrainConfig, train

    _reset_peak(device)
    c = sizes.config
    t0 = time.perf_counter()
    model = _mindeye2(c, device, torch.float32, seed)
    rng = np.random.default_rng(seed)
    n = sizes.trials
    data = SubjectData(c.subjects[0], rng.standard_normal((n, c.voxels[0]), dtype=np.float32),
                       [f"i{i}" for i in range(n)], rng.standard_normal((n, c.clip_tokens, c.clip_dim), dtype=np.float32),
                       blur=rng.standard_normal((n, 4, 28, 28), dtype=np.float32) if c.blurry else None)
    per_epoch = n // sizes.batch
    log_every = min(log_every, max(steps // 3, 1))
    epochs = max(math.ceil((steps + log_every) / per_epoch), 1)
    cuda = device.type == "cuda"
    config = TrainConfig.fast(cuda, epochs=epochs, batch_size=sizes.batch, checkpoint_s=1e12, log_every=log_every,
                              cpu=not cuda, seed=seed)
    _sync(device)
    setup_s = time.perf_counter() - t0
    marks: list[tuple[int, float]] = []

    def progress(step: int, total: int, loss: float) -> None:
        if step % log_every == 0:  # the loop has just read its losses back: the device is done to here
            marks.append((step, time.perf_counter()))

    t1 = time.perf_counter()
    history = train(model, [data], config, progress=progress)
    loop_s = time.perf_counter() - t1
    intervals = [(t - s_t) * 1e3 / (step - s) for (s, s_t), (step, t) in zip(marks[:-1], marks[1:], strict=True)][1:]
    if not intervals:
        raise ValueError(f"bench gpu: {history['steps']} steps leave no timed interval after the first; ask for more")
    step_ms = float(np.median(intervals))
    result = {"setup_s": setup_s, "params": sum(p.numel() for p in model.parameters()), "batch": sizes.batch,
              "steps_run": history["steps"], "log_every": log_every, "timed_intervals": len(intervals),
              "loop_s": loop_s, "step_ms_median": step_ms, "recipe_min": 4650 * step_ms / 60000,
              "finite_losses": bool(np.all(np.isfinite(history["loss"]))), "peak_memory_gb": _peak_gb(device)}
    del model, data
    return result


def bench_caption_refine(device: torch.device, dtype: torch.dtype, tiny: bool = False, repeats: int = 3,
                         warmup: int = 1, seed: int = 0) -> dict:
    """A caption (20 tokens, greedy) and a refinement (MindEye2's 12 of 25 SDXL steps at 768 px) timed with
    the captioner and the refiner both held, seeded random weights at the published sizes (``tiny``: the
    test sizes), median of ``repeats`` after ``warmup``; and the peak memory while they are held."""
    from models.caption.project import random_captioner
    from models.devices import generator_on
    from models.refine.project import random_refiner

    _reset_peak(device)
    t0 = time.perf_counter()
    captioner = random_captioner(device, dtype, seed, tiny=tiny)
    refiner = random_refiner(device, dtype, seed + 1, tiny=tiny)
    _sync(device)
    setup_s = time.perf_counter() - t0
    c = captioner.converter.config
    tokens = torch.randn(1, c.tokens_in, c.dim_in, device=device, generator=generator_on(device, seed), dtype=dtype)
    rng = np.random.default_rng(seed)
    side = refiner.settings.size
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    blurry = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {"caption_ms": [], "refine_ms": []}
    caption = ""
    for i in range(warmup + repeats):
        _sync(device)
        t = time.perf_counter()
        caption = captioner.caption(tokens)[0]
        _sync(device)
        t1 = time.perf_counter()
        refiner.refine(image, caption, blurry, generator_on(device, seed + i))
        _sync(device)
        if i >= warmup:
            times["caption_ms"].append((t1 - t) * 1e3)
            times["refine_ms"].append((time.perf_counter() - t1) * 1e3)
    params = sum(p.numel() for m in (captioner.git, captioner.converter, refiner.pipe.unet, refiner.pipe.vae,
                                     refiner.pipe.text_encoder, refiner.pipe.text_encoder_2) for p in m.parameters())
    result = {"setup_s": setup_s, "repeats": repeats, "warmup": warmup, "params": params,
              "caption_words": len(caption.split()), **{f"{k}_median": float(np.median(v)) for k, v in times.items()},
              "peak_memory_gb": _peak_gb(device)}
    del captioner, refiner
    return result


def project_captions_and_refinement(decoder_gb: float) -> dict:
    """Captioning (GIT-large-COCO through bigG_to_L) and refinement (SDXL base img2img, MindEye2's settings)
    counted on the meta device and projected; and the decoder's bf16 weights with both loaded beside
    ``decoder_gb`` (the decoder's own), against the 24 GB target. Nothing here is measured."""
    from models.caption.project import caption_rows
    from models.projection import GPUS, project_seconds, table
    from models.refine.project import refine_rows

    out = {}
    for name, result in (("caption", caption_rows()), ("refine", refine_rows())):
        rows = result.pop("rows")
        out[name] = {**result, "flops": {n: f for n, f, _ in rows}, "bytes": {n: b for n, _, b in rows},
                     "ms": {g.name: {n: 1e3 * project_seconds(f, b, g) for n, f, b in rows} for g in GPUS},
                     "markdown": table(rows) + f"\n\nWeights held, bf16: {result['weights_bf16_gb']:.2f} GB."}
    parts = {"decoder (MindEye2, unCLIP UNet, VAE decoder)": decoder_gb,
             "captioner (GIT text decoder, bigG_to_L)": out["caption"]["weights_bf16_gb"],
             "refiner (SDXL base: UNet, VAE, both text encoders)": out["refine"]["weights_bf16_gb"]}
    total = sum(parts.values())
    target = TARGETS["decoder_memory_gb"]
    lines = ["| held on the GPU (bf16 weights, projected) | GB |", "| --- | --- |"]
    lines += [f"| {name} | {gb:.2f} |" for name, gb in parts.items()]
    lines += [f"| all of it | {total:.2f} ({'within' if total <= target else 'over'} the {target:.0f} GB target) |"]
    note = ("Weights only: activations at batch 1-2 (the largest, SDXL's VAE at 768 px) are not counted; "
            "`rtdecode bench gpu` on a GPU measures the decoder's peak.")
    out["memory_with_refinement"] = {"parts_gb": parts, "total_gb": total, "target_gb": target,
                                     "within_target": total <= target, "markdown": "\n".join(lines) + "\n\n" + note}
    return out


def _gpu_named(device_name: str) -> str | None:
    """The projected GPU (models.projection.GPUS) a measured device corresponds to, if any."""
    for key, name in (("H200", "H200"), ("H100", "H100 SXM"), ("A100", "A100 80 GB"), ("L40S", "L40S"),
                      ("4090", "RTX 4090")):
        if key in device_name:
            return name
    return None


def beside(measured: dict, projected: dict, device_name: str) -> str:
    """Markdown: each measured figure beside its projection for the same GPU (where there is one) and its target."""
    gpu = _gpu_named(device_name)
    dec, cal = projected.get("decoder", {}), projected.get("calibrate", {})
    ms = dec.get("ms", {}).get(gpu, {}) if gpu else {}

    def proj(value, fmt: str) -> str:
        return fmt.format(value) if value is not None else "-"

    d, t = measured.get("decoder", {}), measured.get("calibrate", {})
    rows = [
        ("brain -> tokens (ridge, backbone, retrieval, 20 prior steps)", d.get("brain_to_tokens_ms_median"), "ms",
         proj(ms.get("brain -> tokens (both above)"), "{:,.1f} ms"), f"{TARGETS['brain_to_tokens_ms']:.0f} ms"),
        ("tokens -> image (unCLIP + VAE decode)", d.get("tokens_to_image_ms_median"), "ms",
         proj(next((v for k, v in ms.items() if k.startswith("tokens -> image")), None), "{:,.1f} ms"),
         f"{TARGETS['tokens_to_image_ms']:.0f} ms"),
        ("Decoder.decode end to end", d.get("decode_ms_median"), "ms", "-", "-"),
        ("peak memory, decoder", d.get("peak_memory_gb"), "GB", proj(dec.get("weights_bf16_gb"), "{:.1f} GB (weights)"),
         f"{TARGETS['decoder_memory_gb']:.0f} GB"),
        ("training step, trainer loop (steady)", t.get("step_ms_median"), "ms",
         proj(cal.get("step_ms", {}).get(gpu), "{:,.1f} ms"), "-"),
        ("one-hour recipe (4,650 steps)", t.get("recipe_min"), "min", proj(cal.get("recipe_minutes", {}).get(gpu), "{:.1f} min"),
         f"{TARGETS['recipe_min']:.0f} min"),
        ("peak memory, training", t.get("peak_memory_gb"), "GB", proj(cal.get("memory_gb"), "{:.1f} GB"), "-"),
    ]
    cr, cap, ref = measured.get("caption_refine", {}), projected.get("caption", {}), projected.get("refine", {})
    both = projected.get("memory_with_refinement", {})
    held = (d.get("peak_memory_gb") or 0) + (cr.get("peak_memory_gb") or 0) if cr.get("peak_memory_gb") else None
    rows += [
        ("a caption (GIT, 20 tokens, greedy)", cr.get("caption_ms_median"), "ms",
         proj(cap.get("ms", {}).get(gpu, {}).get("caption, all of it"), "{:,.1f} ms"), "-"),
        ("a refinement (SDXL, 12 of 25 steps, 768 px)", cr.get("refine_ms_median"), "ms",
         proj(ref.get("ms", {}).get(gpu, {}).get("refinement, all of it"), "{:,.1f} ms"), "-"),
        ("peak memory, captioner + refiner held", cr.get("peak_memory_gb"), "GB",
         proj((cap.get("weights_bf16_gb") or 0) + (ref.get("weights_bf16_gb") or 0) if cap else None,
              "{:.1f} GB (weights)"), "-"),
        ("decoder with both loaded, at most (the two peaks added)", held, "GB",
         proj(both.get("total_gb"), "{:.1f} GB (weights)"), f"{TARGETS['decoder_memory_gb']:.0f} GB"),
    ]
    lines = [f"| figure | measured on {device_name} | projected ({gpu or 'no matching GPU'}) | target |",
             "| --- | --- | --- | --- |"]
    for name, value, unit, projected_cell, target in rows:
        cell = "-" if value is None else f"{value:,.1f} {unit}"
        lines.append(f"| {name} | {cell} | {projected_cell} | {target} |")
    return "\n".join(lines)


def bench_gpu(out: Path | str = "benchmarks/results", calibrate_steps: int = 50, hidden: int | None = None,
              n_voxels: int | None = None, device: str | None = None, sizes: Sizes | None = None, repeats: int = 5,
              warmup: int = 2, project: bool = True, seed: int = 0) -> dict:
    """Measure the decoder and the trainer on ``device`` (CUDA when present), beside the projections; print one
    JSON object and the tables; write gpu.json and gpu.md into ``out``. Returns the JSON object."""
    if sizes is None:
        hidden = hidden or 4096
        sizes = Sizes(config=MindEye2Config(hidden=hidden, voxels=[n_voxels or 15724], blurry=hidden >= 4096))
    c = sizes.config
    dev = torch.device(device) if device else torch.device("cuda") if torch.cuda.is_available() else None
    projected: dict = {}
    if project:
        from calibration.bench import project_calibrate
        from rtdecode.decoder.project import project_decoder

        projected = {"decoder": project_decoder(hidden=c.hidden, n_voxels=c.voxels[0], steps=sizes.unclip_steps),
                     "calibrate": project_calibrate(hidden=c.hidden, n_voxels=c.voxels[0], batch=sizes.batch,
                                                    trials=sizes.trials)}
        projected.update(project_captions_and_refinement(projected["decoder"]["weights_bf16_gb"]))
    lines = []
    if projected:
        lines += ["## Projected (counted on the meta device; not measured)", ""]
        lines += [line for name, result in projected.items() for line in (f"### {name}", "", result["markdown"], "")]
    report: dict = {"cuda": dev is not None and dev.type == "cuda", "device": None,
                    "projected": {k: {kk: vv for kk, vv in v.items() if kk != "markdown"} for k, v in projected.items()}}
    if dev is None:
        print("rtdecode bench gpu: no CUDA device here; the projections only (nothing measured)", flush=True)
    else:
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        report["device"] = name
        report["decoder"] = bench_decode(sizes, dev, dtype, repeats=repeats, warmup=warmup, seed=seed)
        gc.collect()
        report["calibrate"] = bench_train(sizes, dev, steps=calibrate_steps, seed=seed)
        if dev.type == "cuda":  # at the published sizes only where they fit: 3.6 B parameters
            gc.collect()
            report["caption_refine"] = bench_caption_refine(dev, dtype, repeats=repeats, warmup=1, seed=seed)
        lines += [f"## Measured on {name} beside the projections", "",
                  beside({"decoder": report["decoder"], "calibrate": report["calibrate"],
                          "caption_refine": report.get("caption_refine", {})}, report["projected"], name), ""]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, default=str), flush=True)
    print("\n".join(lines), flush=True)
    return report
