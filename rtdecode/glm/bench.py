"""``rtdecode bench glm``."""
