"""Objectives: nn.Modules that own their forward pass and call pure losses (csetrain.losses)."""
