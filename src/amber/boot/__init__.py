"""What boots: the kernels of a snapshot (kernels.py) and their initrds (initrd.py)."""
