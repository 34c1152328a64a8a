"""amber: an immutable btrfs root with transactional updates and kernel live patching."""

__version__ = "0.1.0"
