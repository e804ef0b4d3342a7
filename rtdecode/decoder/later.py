"""A decoded trial's later work: its caption, then its refined picture (docs/decoder.md, Captions, Refinement).

Neither delays what comes before it: the caption is made once the trial's retrieval is published and the
beta acknowledged; a refinement (``--refine idle``) only when no beta came and no first reconstruction
waits, or (``always``) right after the trial's first picture.
"""

from __future__ import annotations

import logging

import numpy as np

from rtdecode.decoder.results import ResultStore
from rtdecode.wire.protocol import Message, encode_png

log = logging.getLogger("rtdecode.decoder.service")

REFINE = ("off", "idle", "always")  # SDXL refinement (--refine): never, when nothing else waits, after each image


def refine_mode(refine: str | None, loaded: bool) -> str:
    """``--refine``: off, idle or always; by default idle when a refiner is loaded, off otherwise."""
    if refine is None:
        return "idle" if loaded else "off"
    if refine not in REFINE:
        raise ValueError(f"--refine must be one of {', '.join(REFINE)}, got {refine!r}")
    if refine != "off" and not loaded:
        raise ValueError(f"--refine {refine} needs a refiner (--refiner: SDXL base in diffusers layout or its single file)")
    return refine


class AfterRetrieval:
    """Mixed into the decoder service: it holds ``decoder``, ``publisher``, ``refine`` and ``refine_queue``."""

    def _caption(self, store: ResultStore, key: str, fields: dict, tokens) -> str:
        """Caption a decoded trial, store it, publish it (stage 'caption'); '' without a captioner, or when the
        captioner fails (logged: the trial is decoded and acknowledged; a restart tries again)."""
        if self.decoder.captioner is None:
            return ""
        try:
            text, ms = self.decoder.caption(tokens)
        except Exception as exc:  # the captioner's failure is not the beta's: its retrieval stands
            log.error("caption of %s failed: %s: %s", key, type(exc).__name__, exc)
            return ""
        store.save_caption(key, text)
        _uid, run, trial, version = key.split(":")
        self.publisher.send(Message("result", {"run": int(run), "trial": int(trial), "version": version,
                                               "image": fields.get("image", ""), "stage": "caption", "caption": text,
                                               "timings_ms": {"caption_ms": ms}, "tier": self.decoder.tier,
                                               **store.identity}))
        return text

    def _publish_image(self, store: ResultStore, key: str, fields: dict, stage: str, image, timings: dict) -> None:
        _uid, run, trial, version = key.split(":")
        caption = fields.get("caption")
        self.publisher.send(Message("result", {"run": int(run), "trial": int(trial), "version": version,
                                               "image": fields.get("image", ""), "stage": stage,
                                               "timings_ms": timings, "tier": self.decoder.tier,
                                               **({"caption": caption} if caption else {}), **store.identity},
                                    images={"reconstruction": encode_png(image)}))

    def _refine_next(self) -> None:
        """Refine the oldest waiting reconstruction with its caption; published as stage 'refined', a later
        version of the same trial's picture (the first stays as it was, on disk and on every console)."""
        store, key, fields = self.refine_queue.popleft()
        from PIL import Image

        with Image.open(store.image_path(key)) as im:
            first = np.asarray(im.convert("RGB"))
        try:
            refined, ms = self.decoder.refine(first, fields["caption"], store.tokens(key)[1])
        except Exception as exc:  # the refiner's failure (memory, say) is not the trial's: its first picture stands
            log.error("refinement of %s failed: %s: %s", key, type(exc).__name__, exc)
            return
        store.save_refined(key, refined)
        self.refined_here += 1
        self._publish_image(store, key, fields, "refined", refined, {"refine_ms": ms})
