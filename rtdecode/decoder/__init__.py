"""The decoder: betas -> CLIP-space tokens -> retrievals and reconstructions, as its own process."""
