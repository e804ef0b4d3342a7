"""The console's alignment tab: what each run was registered to and how far that moved it, where the
mask landed on the run's reference, and the newest temporal-SNR mosaic."""

from __future__ import annotations

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from gui.state import ConsoleState

MOSAIC_W = 420  # a mosaic's width where its height allows (at most 2x its pixels)
MOSAIC_MIN_H = 160  # never shorter: a wide row of slices was drawn as a ~30 px strip (the tab scrolls instead)


def registration_text(view) -> str:
    """What the run was registered to and how far that moved it; for a run that was not registered
    (no session reference: the session's first run is where its mask is made) that it was not."""
    f = view.figures
    if "shift_mm" not in f:
        return ("not registered: no session reference is configured, so this run's own reference is the"
                " session's (runs after it are registered to it)") if f else "registration not reported"
    moved = f"shift {f['shift_mm']:.1f} mm, rotation {f.get('rotation_deg', 0):.1f} deg"
    if view.registered_to:
        return f"registered to {view.registered_to}: {moved}"
    return f"registration: {moved} (an older scanner side, which did not say to what)"


class AlignmentPanel(QtWidgets.QWidget):
    """The current run's mask on its reference (red outline), the registration figures, the scanner
    side's warning, and the latest temporal-SNR mosaic."""

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        layout = QtWidgets.QVBoxLayout(self)
        self.figures = QtWidgets.QLabel("no run yet")
        self.figures.setWordWrap(True)
        self.warning = QtWidgets.QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ff5050; font-weight: bold;")
        self.mosaic = QtWidgets.QLabel()
        self.tsnr_caption = QtWidgets.QLabel("")
        self.tsnr = QtWidgets.QLabel()
        for label in (self.mosaic, self.tsnr):  # left-aligned: a mosaic wider than the tab scrolls sideways
            label.setAlignment(QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignTop)
        for w in (self.figures, self.warning, self.mosaic, self.tsnr_caption, self.tsnr):
            layout.addWidget(w)
        layout.addStretch(1)
        self._drawn: tuple = ()

    def draw(self) -> None:
        view = self.state.alignment.get(self.state.run) if self.state.run is not None else None
        key = (id(view), None if view is None else (view.warning, view.tsnr_at, id(view.mosaic)))
        if key == self._drawn:
            return
        self._drawn = key
        if view is None:
            return
        f = view.figures
        parts = [f"run {view.run}"]
        parts.append(registration_text(view))
        if "in_brain" in f:
            parts.append(f"mask voxels on brain: {100 * f['in_brain']:.0f} %")
        if "match" in f:  # compared with what the run was registered to (run 1's reference, without a session one)
            parts.append(f"match to {view.registered_to or 'the reference'}: {f['match']:.2f}")
        self.figures.setText("\n".join(parts))
        self.warning.setText(f"CHECK THE ALIGNMENT: {view.warning}" if view.warning else "")
        dpr = self.devicePixelRatioF()
        for label, image in ((self.mosaic, view.mosaic), (self.tsnr, view.tsnr)):
            if image is None:
                label.clear()
                continue
            h, w = image.shape[:2]
            scale = max(min(2.0, MOSAIC_W / max(w, 1)), MOSAIC_MIN_H / max(h, 1))
            label.setPixmap(_scaled(image, int(w * scale), int(h * scale), dpr))
            label.setMinimumSize(int(w * scale), int(h * scale))  # the scroll area scrolls rather than squeezing it
        self.tsnr_caption.setText("" if view.median_tsnr is None else
                                  f"temporal SNR at volume {view.tsnr_at + 1} (median {view.median_tsnr:.0f}; 0 to 100)")


def _scaled(image: np.ndarray, w: int, h: int, dpr: float) -> QtGui.QPixmap:
    img = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    q = QtGui.QImage(img.data, img.shape[1], img.shape[0], 3 * img.shape[1], QtGui.QImage.Format.Format_RGB888).copy()
    pix = QtGui.QPixmap.fromImage(q).scaled(max(1, int(w * dpr)), max(1, int(h * dpr)),
                                            QtCore.Qt.AspectRatioMode.KeepAspectRatio,
                                            QtCore.Qt.TransformationMode.FastTransformation)
    pix.setDevicePixelRatio(dpr)
    return pix
