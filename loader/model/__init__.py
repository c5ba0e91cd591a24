"""What the user wrote: the manifest, declared fields, settings, storage settings, the YAML reader."""
