"""`negative_mining=momentum_queue`: ESimCSE's momentum contrast (Wu et al., arXiv 2109.04380, §3.2).

A momentum (EMA) copy of the transformer embeds each batch's original sentences; the last `size`
of those embeddings are extra negatives for the next steps' anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csetrain.config import ConfigError, CsetrainError
from csetrain.negatives.base import NegativeMiner, Negatives
from csetrain.negatives.fifo import FIFO


class MomentumQueue(NegativeMiner):
    """FIFO queue of `size` momentum-encoder embeddings of past anchors (ESimCSE's `neg_size`,
    160 for batch 64), served as unaligned extra negatives: each anchor's logits are
    [anchor . positives | anchor . queue] (on the first step the queue is empty: in-batch only).

    Batch fields: `anchor` (any objective with anchors: esimcse, simcse_unsup, simcse_sup).
    Keys: the momentum encoder's pooled embedding of the anchor rows (the original sentences,
    not the augmented view), with dropout off and no gradient, passed through the *live* MLP head
    when the encoder has one (`encoder.project`), as ESimCSE's code does.
    Momentum encoder: `encoder.ema_copy(m)` (modeling/momentum.py), an EMA of the backbone's
    parameters only (not buffers, not the head), m = 0.995.

    Ordering. ESimCSE, at step t with online weights w_t: (1) EMA m_t = m*m_{t-1} + (1-m)*w_t
    inside the forward, (2) loss with the queue, (3) enqueue keys of batch t from m_t, then the
    optimizer makes w_{t+1}. Our hook runs after the optimizer step: (3') enqueue keys of batch t
    from the momentum encoder, then (1') EMA toward the new online weights w_{t+1}. The loss (2)
    never reads the momentum encoder, so moving step t+1's EMA to the end of step t changes
    nothing: every key of batch t is computed from exactly m_t. At t=0, m_0 = w_0 (a copy of the
    online weights) in both, provided `bind` ran before the first optimizer step.

    State: the momentum encoder and `queue` (a `FIFO` of buffers) are submodules in
    `state_dict()`, so they checkpoint with the objective. The encoder is built by `bind(encoder)`,
    because only the online encoder knows the architecture: it runs lazily at the first upkeep
    (the online weights are then w_1, one optimizer step past w_0; call `bind` before training
    to start from w_0 exactly) and must run before `load_state_dict` on a fresh miner.

    Deviations from the official code: its momentum encoder is copied in `__init__` *before*
    `from_pretrained` loads the checkpoint (and `init_weights` re-randomises it), so, from our
    reading, it starts from random weights and only approaches the online encoder through the
    EMA; we start from the online weights, as the paper describes. Its queue is reset at every
    epoch (one epoch in its recipes); ours persists. Its momentum forward runs under the fp16
    autocast of the training step; ours runs in the encoder's own precision.
    """

    def __init__(self, size: int = 160, momentum: float = 0.995) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"negative_mining.size={size}: choose a queue length >= 1")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"negative_mining.momentum={momentum}: choose a value in [0, 1)")
        self.size, self.momentum = size, momentum
        self.register_module("momentum_encoder", None)
        self.queue = FIFO(size, keys=torch.float32)  # keys (K, D) once bound; newest last

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Create the momentum encoder (an EMA copy of the encoder's backbone) and size the queue."""
        if self.momentum_encoder is not None:
            return
        self.momentum_encoder = encoder.ema_copy(self.momentum)
        self.queue.allocate(encoder.device, keys=(encoder.hidden_size,))

    def extra_negatives(self, anchors: Tensor, views: dict[str, Tensor]) -> Negatives | None:
        if int(self.queue.filled) == 0:
            return None
        return Negatives(self.queue.valid("keys"), aligned=False)  # (M, D)

    def after_optimizer_step(self, encoder: nn.Module, batch) -> None:
        self.bind(encoder)
        ids, mask = (
            batch.split(batch.input_ids)["anchor"],
            batch.split(batch.attention_mask)["anchor"],
        )
        self.enqueue(self.keys(encoder, ids, mask))
        self.ema_update(encoder)

    def keys(self, encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Momentum-encoder embeddings (dropout off, no grad, live head): (B, L) -> (B, D)."""
        width = int(attention_mask.sum(1).max())  # the anchors' own padding, not the positives'
        return self.momentum_encoder.embed(encoder, input_ids[:, :width], attention_mask[:, :width])

    def enqueue(self, keys: Tensor) -> None:
        """Append keys (B, D) at the end; the oldest rows fall off the front (FIFO of length K)."""
        self.queue.push(keys=keys)

    def ema_update(self, encoder: nn.Module) -> None:
        """momentum_param = m * momentum_param + (1 - m) * online_param (parameters only)."""
        self.momentum_encoder.update(encoder)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if self.momentum_encoder is None and any(
            k.startswith(prefix + "momentum_encoder.") for k in state_dict
        ):
            raise CsetrainError(
                "negative_mining=momentum_queue: call miner.bind(encoder) before load_state_dict "
                "(the momentum encoder is a copy of the encoder's backbone)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
