"""What this node is: BTF reader, running-kernel probe, the kernel catalog, ELF checks."""
