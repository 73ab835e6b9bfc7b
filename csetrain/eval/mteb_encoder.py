"""The encoder side of eval=mteb: a csetrain encoder seen through mteb 2.x's EncoderProtocol
(duck-typed, so it imports without mteb), with the ModelMeta and the weights fingerprint that
name it in mteb's results. mteb itself is imported only inside the calls that need it."""

from __future__ import annotations

import hashlib
import re
import time
import uuid

import torch

from csetrain.modeling.prompts import mteb_prompt

# Settings that change how training runs, never an embedding: left out so the same weights
# share one fingerprint whether or not a trainer prepared the encoder.
TRAINING_ONLY_SETTINGS = {"training", "packing"}


def fingerprint(encoder) -> str:
    """sha256 over everything that shapes the embeddings: parameter/buffer bytes plus the
    encoder's plain settings (pooler, head mode, layer, dim, ...). Two checkpoints, or one
    model trained in place, never share a fingerprint."""
    if not isinstance(encoder, torch.nn.Module):  # nothing to hash: a fresh id never hits a cache
        return uuid.uuid4().hex
    settings = {
        k: v
        for k, v in vars(encoder).items()
        if not k.startswith("_")
        and k not in TRAINING_ONLY_SETTINGS
        and isinstance(v, str | int | float | None)
    }
    if prompts := getattr(encoder, "prompts", None):  # they change what is embedded
        settings["prompts"] = repr(sorted(prompts.items()))
    digest = hashlib.sha256(repr((type(encoder).__name__, sorted(settings.items()))).encode())
    # A train-only head (SimCSE's MLP) never shapes an embedding, and its seeded init would give
    # the same start model one fingerprint per seed.
    unused = "head." if settings.get("mlp_head", "always") != "always" else None
    for name, tensor in encoder.state_dict().items():
        if unused and name.startswith(unused):
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def model_meta(encoder, revision: str):
    """The ModelMeta mteb needs: an `org/name` name, a revision, cosine as the similarity."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    source = str(getattr(encoder, "source", type(encoder).__name__))
    is_module = isinstance(encoder, torch.nn.Module)
    return ModelMeta(
        loader=None,
        name="csetrain/" + re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-"),
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=sum(p.numel() for p in encoder.parameters()) if is_module else None,
        memory_usage_mb=None,
        max_tokens=None,
        embed_dim=getattr(encoder, "output_dim", None),
        license=None,
        open_weights=None,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=False,
        training_datasets=None,
    )


class MTEBEncoder:
    """Adapts `encoder.encode(sentences, batch_size, progress) -> Tensor` to mteb 2.x's
    `encode(DataLoader, *, task_metadata, hf_split, hf_subset, prompt_type, **kwargs)`.

    Duck-typed (no mteb base class) so this module imports without mteb. mteb's prompt_type
    (query/document) picks the model's prompt of that name as mteb does for sentence-transformers
    models (modeling/prompts.py: mteb_prompt); without one the model's default applies. mteb asks
    for each column of each task separately; the adapter remembers every (prompt, sentence) vector
    for its lifetime (one evaluator call, one set of weights), so
    each distinct sentence is encoded once, in length-sorted batches, as the native evaluator does
    (with the CPU token cap: 2.0x mteb's speed on the seven STS tasks, 1.7x over all thirteen
    entries, same scores; docs/mteb.md).
    """

    def __init__(self, encoder, batch_size: int = 128, progress: bool = False) -> None:
        self.encoder, self.batch_size, self.progress = encoder, batch_size, progress
        self.mteb_model_meta = model_meta(encoder, fingerprint(encoder))
        self.memo: dict[tuple, torch.Tensor] = {}
        self.encode_s = 0.0  # wall seconds inside the encoder: the rest is mteb's scoring

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        prompt = mteb_prompt(self.encoder, getattr(task_metadata, "name", ""), prompt_type)
        sentences = [(prompt, text) for batch in inputs for text in batch["text"]]
        new = list(dict.fromkeys(s for s in sentences if s not in self.memo))
        if new:
            extra = {"prompt": prompt} if prompt is not None else {}
            texts, started = [text for _, text in new], time.perf_counter()
            vectors = self.encoder.encode(texts, self.batch_size, self.progress, **extra)
            self.encode_s += time.perf_counter() - started
            self.memo.update(zip(new, vectors))
        return torch.stack([self.memo[s] for s in sentences]).cpu().numpy()

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)
