"""User processors: worker pools the loader supervises, the host they run in, the ABI checks."""
