"""The Dagster code location of saelake: `defs` is built from the config named by SAELAKE_CONFIG
(default: configs/demo.yaml, the offline demo)."""

from .definitions import build_definitions

defs = build_definitions()
