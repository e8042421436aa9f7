"""The model registry (registry.json), installed as the package data ``pointtrack_cli.registry``."""
