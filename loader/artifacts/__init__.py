"""What the farm made: the store (local and S3), artifact meta, the lock, source digests."""
