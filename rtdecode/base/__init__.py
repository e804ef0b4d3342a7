"""The base layer: settings, the session folder, events tables, errors, timing, threads, storage,
caches and crash points; imported by every stage, imports none."""
