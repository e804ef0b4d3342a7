"""``rtdecode bench decoder --project``: the decoder's work counted at full size on the meta device, and
projected onto named GPUs (models.projection). No weights, no memory, no GPU: nothing here is measured."""

from __future__ import annotations

import torch

from models.projection import GPUS, count_flops, param_bytes, project_seconds, table

TARGETS = {"brain_to_tokens_s": 0.2, "tokens_to_image_s": 2.0, "memory_gb": 24.0}


def project_decoder(hidden: int = 4096, n_voxels: int = 15724, steps: int = 38, prior_steps: int = 20) -> dict:
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2
    from models.unclip.convert import UNetLayout
    from models.unclip.pipeline import UnclipReconstructor, UnclipSettings, build_modules

    config = MindEye2Config(subjects=["subj01"], voxels=[n_voxels], hidden=hidden, blurry=hidden >= 4096)
    with torch.device("meta"):
        model = MindEye2(config).eval()
    unet, vae = build_modules(UNetLayout(), device="meta")
    vae.encoder, vae.quant_conv = None, None
    voxels = torch.zeros(1, n_voxels, device="meta")
    held: dict = {}
    with torch.no_grad():
        def backbone_pass():
            held["backbone"], _clip, _blur = model(voxels, 0)

        backbone = count_flops(backbone_pass)
        prior = count_flops(lambda: model.diffusion_prior.sample(held["backbone"], steps=prior_steps))
        tokens = torch.zeros(1, 256, config.clip_dim, device="meta")
        one_step_and_vae = count_flops(lambda: UnclipReconstructor(unet, vae, UnclipSettings(steps=1))(tokens))
        decode = count_flops(lambda: vae.decode(torch.zeros(1, 4, 96, 96, device="meta")))
    unet_step = one_step_and_vae - decode
    prior_bytes = param_bytes(model.diffusion_prior)
    mindeye_bytes = param_bytes(model)
    front_bytes = mindeye_bytes - prior_bytes
    unet_bytes, vae_bytes = param_bytes(unet), param_bytes(vae)
    weights_gb = (mindeye_bytes + unet_bytes + vae_bytes) / 1e9
    rows = [
        ("ridge + backbone (batch 1)", backbone, front_bytes),
        (f"diffusion prior, {prior_steps} steps", prior, prior_steps * prior_bytes),
        ("brain -> tokens (both above)", backbone + prior, front_bytes + prior_steps * prior_bytes),
        ("unCLIP UNet, one step with CFG (batch 2, 96 x 96 latent)", unet_step, unet_bytes),
        ("VAE decode to 768 px", decode, vae_bytes),
        (f"tokens -> image ({steps} steps + decode)", steps * unet_step + decode, steps * unet_bytes + vae_bytes),
    ]
    return {"stage": "decoder projection (meta device, counted; projected, not measured)", "hidden": hidden,
            "voxels": n_voxels, "mindeye2_params": mindeye_bytes // 2, "unet_params": unet_bytes // 2,
            "vae_decoder_params": vae_bytes // 2, "weights_bf16_gb": weights_gb,
            "flops": {name: flops for name, flops, _ in rows}, "targets": TARGETS,
            "ms": {g.name: {name: 1e3 * project_seconds(f, b, g) for name, f, b in rows} for g in GPUS},
            "markdown": table(rows, memory_gb=weights_gb) + "\n\nMemory: the bf16 weights only (activations at "
                        "batch 1 are small beside them; `rtdecode bench gpu` measures the peak)."}
