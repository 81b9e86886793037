"""Integrations with training stacks (Lightning, Hugging Face Trainer, torch.distributed, W&B
dashboards). Each is thin: the logic stays in ``dynmon.Monitor``."""
