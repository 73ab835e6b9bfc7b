"""`regularizer=mlm`: masked-language-model auxiliary loss added to any objective (SimCSE's
`do_mlm`, Gao et al., arXiv 2104.08821, Appendix E / Table E.1: weight 0.1)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from csetrain.config import ConfigError
from csetrain.modeling.frozen import field_rows
from csetrain.objectives.base import ObjectiveOutput

IGNORE = -100  # cross_entropy's ignore_index: positions that were not chosen for prediction

# Checkpoint key prefixes of BERT's and RoBERTa's pretrained MLM heads -> this module's names.
HEAD_KEYS = {
    "cls.predictions.transform.dense.": "transform.dense.",
    "cls.predictions.transform.LayerNorm.": "transform.LayerNorm.",
    "cls.predictions.bias": "bias",
    "lm_head.dense.": "transform.dense.",
    "lm_head.layer_norm.": "transform.LayerNorm.",
    "lm_head.bias": "bias",
}


def mask_tokens(
    ids: Tensor,
    attention_mask: Tensor,
    special_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: each real, non-special token is chosen with `probability`; a chosen token
    becomes the mask token (80%), a uniformly random token (10%) or stays itself (10%).
    ids, attention_mask (N, L) -> (masked ids (N, L), labels (N, L): the original id where chosen,
    IGNORE elsewhere). Draws on the CPU generator (or the global RNG), so results are seeded."""
    shape = ids.shape
    eligible = attention_mask.bool() & ~torch.isin(ids, special_ids.to(ids.device))
    chosen = (torch.rand(shape, generator=generator) < probability).to(ids.device) & eligible
    roll = torch.rand(shape, generator=generator).to(ids.device)
    random_ids = torch.randint(vocab_size, shape, generator=generator).to(ids.device)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


class HeadTransform(nn.Module):
    """BERT's prediction-head transform (dense -> activation -> LayerNorm), named like BERT's so
    a checkpoint's weights load by name."""

    def __init__(self, hidden: int, activation: str, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[activation]
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


def pretrained_head_state(name_or_path: str) -> dict[str, Tensor]:
    """The MLM head tensors of a checkpoint (local folder or HF cache, never the network), renamed
    to this module's keys; {} when the checkpoint has none (e.g. all-MiniLM-L6-v2)."""
    from huggingface_hub import try_to_load_from_cache
    from safetensors import safe_open

    if not name_or_path:  # a config built in memory (the tiny model): no checkpoint
        return {}
    folder = Path(name_or_path)
    file = folder / "model.safetensors" if folder.is_dir() else None
    if file is None:
        cached = try_to_load_from_cache(name_or_path, "model.safetensors")
        file = Path(cached) if isinstance(cached, str) else None
    if file is None or not file.is_file():
        return {}
    state = {}
    with safe_open(str(file), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safetensors handles are not iterable)
            for prefix, ours in HEAD_KEYS.items():
                if key.startswith(prefix):
                    name = ours + key[len(prefix) :]
                    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
                    state[name] = f.get_tensor(key)
    return state


class MLM(nn.Module):
    """mlm_weight * masked-LM cross-entropy on the anchors, added to the objective's loss.

    It runs its own forward pass of the encoder's backbone (`encoder.token_states`) on a masked copy of the batch's anchor
    tokens (`mlm_probability` 0.15, BERT's 80/10/10) and predicts the chosen tokens. Head: BERT's
    structure, a transform (dense, activation, LayerNorm) and an output bias of its own, with the
    decoder *tied* to the live encoder's input embeddings (read at every forward). Its weights come
    from the checkpoint's pretrained MLM head when it has one (`cls.predictions.*`, e.g.
    bert-base-uncased; `lm_head.*` for RoBERTa) and `pretrained_head` is true; otherwise it is fresh
    (normal(0, initializer_range)); the packaged all-MiniLM-L6-v2 has no MLM head.

    The head is built by `bind(encoder)` (train.py calls it before building the optimizer), from
    the encoder's own config, tokenizer and checkpoint path: no second copy of the model is loaded.

    Deviations from SimCSE's `do_mlm`: SimCSE masks every view (both dropout copies in unsup) and
    builds `lm_head = BertLMPredictionHead(config)` under a name the checkpoint does not use, so its
    head is fresh and its decoder untied (a new 30522 x 768 matrix); we mask the anchors only, tie
    the decoder to the input embeddings like BERT's own pretraining head, and load the pretrained
    head where one exists. The loss averages over the chosen tokens, as SimCSE's (HF's) does.
    """

    def __init__(
        self, mlm_weight: float = 0.1, mlm_probability: float = 0.15, pretrained_head: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(
                f"regularizer.mlm.mlm_probability={mlm_probability}: choose in (0, 1)"
            )
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        self.pretrained_head = pretrained_head
        self.transform: HeadTransform | None = None  # built by bind (sizes come from the encoder)
        self.loaded_pretrained = False

    def bind(self, encoder: nn.Module, dataset=None) -> None:
        """Build the head for `encoder`: its sizes, mask/special ids and any pretrained MLM head."""
        if self.transform is not None:
            return
        config, tokenizer = encoder.config, encoder.tokenizer
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                "regularizer.mlm: the model's tokenizer has no mask token; choose a BERT/RoBERTa model"
            )
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, config.vocab_size
        self.register_buffer(
            "special_ids", torch.tensor(sorted(tokenizer.all_special_ids)), persistent=False
        )
        self.transform = HeadTransform(config.hidden_size, config.hidden_act, config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.transform.dense.weight, std=config.initializer_range)
        nn.init.zeros_(self.transform.dense.bias)
        state = pretrained_head_state(config.name_or_path) if self.pretrained_head else {}
        if state:
            self.load_state_dict(state, strict=False)
        self.loaded_pretrained = bool(state)
        self.to(next(encoder.parameters()).device)

    def forward(self, views, batch, encoder) -> ObjectiveOutput:
        ids, mask = field_rows(batch, "anchor")
        masked, labels = mask_tokens(
            ids, mask, self.special_ids, self.mask_id, self.vocab_size, self.mlm_probability
        )
        hidden = encoder.token_states(masked, mask)  # (B, L, H)
        chosen = labels != IGNORE  # (B, L)
        if not chosen.any():  # a batch of very short sentences can draw no token
            zero = hidden.sum() * 0.0
            return ObjectiveOutput(zero, {"unweighted_loss": zero.detach()})
        embeddings = encoder.input_embeddings()  # (V, H), tied decoder
        logits = F.linear(self.transform(hidden[chosen]), embeddings, self.bias)  # (N, V)
        loss = F.cross_entropy(logits.float(), labels[chosen])
        accuracy = (logits.detach().argmax(-1) == labels[chosen]).float().mean()
        return ObjectiveOutput(
            self.mlm_weight * loss, {"unweighted_loss": loss.detach(), "accuracy": accuracy}
        )
