"""Model weights: ``registry`` (which file each model id uses, from ``registry.json``), ``hub`` (the Hub/URL
download, cache and ``load_weights``) and ``state_dict`` (reading checkpoint files safely, checking layouts).

Import the submodule you need: ``registry`` is light, ``hub`` and ``state_dict`` bring torch and huggingface_hub.
"""
