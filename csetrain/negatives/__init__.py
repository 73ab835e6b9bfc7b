"""Negative miners: where each anchor's negatives come from beyond the other rows of the batch."""
