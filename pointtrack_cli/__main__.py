"""``python -m pointtrack_cli`` (used by torchrun for distributed fine-tuning)."""
from .cli import main

main()
