"""Test infrastructure that is not part of amber: the VM harness and its guest agent.

Nothing here is packaged; the agent reaches test images only."""
