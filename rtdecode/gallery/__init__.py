"""Image galleries: stimuli as data (ids, image files, embeddings).

- :mod:`rtdecode.gallery.builtin`: the built-in images (``sim-NNNNN``), painted on demand, no download.
- :mod:`rtdecode.gallery.folder`: a folder of PNG/JPEG images named by id (what ``--gallery`` takes).
- :mod:`rtdecode.gallery.embed`: images by id through an embedder, once per image, cached on disk.

Calibration, the decoder, the demo and the simulator all take their images from here, so none of
them needs another to know what an image gallery is.
"""
