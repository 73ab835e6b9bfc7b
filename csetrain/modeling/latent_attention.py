"""NV-Embed's latent-attention pooling (Lee et al., "NV-Embed", arXiv 2405.17428, §3.2).

Every token state is a query into a trainable latent array (the paper's "dictionary" K = V, 512
latents, 8 heads), the attention output goes through an MLP, and the sentence vector is the mean
of the result over real tokens: (N, L, D) token states + (N, L) mask -> (N, D).

The paper writes O = softmax(Q K^T) V followed by a GELU MLP. We follow the released NV-Embed-v2
code (`LatentAttentionModel` in its modeling_nvembed.py), which is what the published model
computes: pre-LayerNorm on the token states and on the latents, separate bias-free projections of
queries, keys and values (keys and values both come from the one latent array), scaling by
1/sqrt(dim_head), a residual connection around the attention and around the MLP, a GEGLU MLP
(hidden `mlp_mult` x D, as in the code), latents drawn from N(0, 1). `dim_head` defaults to the
hidden size, as the code sets it. Left out: the code's final L2 normalisation (every csetrain
loss and evaluation takes cosines, so it changes nothing there; a training-only head after the
pooler sees the unnormalised vector, as it does after every other pooler).

NV-Embed also leaves the instruction tokens out of that mean (in training and use): set
`model.mask_instruction=true` with an instructed corpus (csetrain/modeling/prompt_mask.py gives
this layer the mask without them).

Padding: each token attends to the latents only (never to other tokens), so a padding token
changes nothing but its own row, which the masked mean leaves out.

This file imports only torch and safetensors: `csetrain.modeling.export` copies it into a saved
model folder, so `SentenceTransformer(folder, trust_remote_code=True)` builds the layer (as
`LatentAttentionPooling`) without csetrain installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class LatentAttention(nn.Module):
    """Token states (N, L, D) and mask (N, L) -> sentence vectors (N, D)."""

    def __init__(
        self,
        hidden_size: int,
        num_latents: int = 512,
        heads: int = 8,
        dim_head: int | None = None,
        mlp_mult: int = 4,
    ) -> None:
        super().__init__()
        dim_head = dim_head or hidden_size
        inner = heads * dim_head
        self.hidden_size, self.num_latents, self.heads = hidden_size, num_latents, heads
        self.dim_head, self.mlp_mult = dim_head, mlp_mult
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size))  # (R, D)
        self.norm_queries = nn.LayerNorm(hidden_size)
        self.norm_latents = nn.LayerNorm(hidden_size)
        self.to_q = nn.Linear(hidden_size, inner, bias=False)
        self.to_kv = nn.Linear(hidden_size, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, hidden_size, bias=False)
        self.norm_mlp = nn.LayerNorm(hidden_size)
        self.mlp_in = nn.Linear(hidden_size, 2 * mlp_mult * hidden_size)  # GEGLU value + gate
        self.mlp_out = nn.Linear(mlp_mult * hidden_size, hidden_size)

    def sizes(self) -> dict:
        """The constructor's keyword arguments besides `hidden_size` (`model.latent_attention`)."""
        return {
            "num_latents": self.num_latents,
            "heads": self.heads,
            "dim_head": self.dim_head,
            "mlp_mult": self.mlp_mult,
        }

    def attend(self, states: Tensor) -> Tensor:
        """Each token queries the latents; residual. (N, L, D) -> (N, L, D)."""
        n, length, _ = states.shape
        q = self.to_q(self.norm_queries(states))  # (N, L, H*Dh)
        k, v = self.to_kv(self.norm_latents(self.latents)).chunk(2, dim=-1)  # (R, H*Dh) each
        q = q.view(n, length, self.heads, self.dim_head).transpose(1, 2)  # (N, H, L, Dh)
        k, v = (
            t.view(-1, self.heads, self.dim_head).transpose(0, 1).expand(n, -1, -1, -1)
            for t in (k, v)
        )  # (N, H, R, Dh): the same latents for every sentence
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, Dh), scale 1/sqrt(Dh)
        out = out.transpose(1, 2).reshape(n, length, self.heads * self.dim_head)
        return self.to_out(out) + states

    def mlp(self, x: Tensor) -> Tensor:
        """Pre-norm GEGLU MLP with a residual. (N, L, D) -> (N, L, D)."""
        value, gate = self.mlp_in(self.norm_mlp(x)).chunk(2, dim=-1)
        return self.mlp_out(value * F.gelu(gate)) + x

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        x = self.mlp(self.attend(states))  # (N, L, D)
        weights = mask.unsqueeze(-1).to(x.dtype)  # (N, L, 1)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def save(self, folder: str | Path, **_) -> None:
        """config.json + model.safetensors in `folder` (what `load` reads back)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"hidden_size": self.hidden_size, **self.sizes()}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE))

    @classmethod
    def load(cls, folder: str | Path):
        """The layer `save` wrote to `folder`. (One parameter: sentence-transformers calls it so.)"""
        folder = Path(folder)
        layer = cls(**json.loads((folder / CONFIG_FILE).read_text()))
        layer.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return layer


class LatentAttentionPooling(LatentAttention):
    """The same layer as a sentence-transformers module: reads `token_embeddings` and
    `attention_mask` from the features the Transformer module produced, writes
    `sentence_embedding`."""

    def forward(self, features: dict) -> dict:
        features["sentence_embedding"] = super().forward(
            features["token_embeddings"], features["attention_mask"]
        )
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.hidden_size
