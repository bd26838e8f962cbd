"""The SAEs stage: SAE variants trained or loaded, stored, and their reconstruction quality measured."""
