"""``python -m pointtrack_cli`` (what torchrun runs: ``torchrun ... -m pointtrack_cli finetune|track|ensemble|eval ...``)."""
from .cli import main

main()
