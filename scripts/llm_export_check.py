"""Check a tiny-decoder CLI run (docs/llm.md): its MLflow model folder, loaded by
sentence-transformers, gives csetrain's embeddings and the STS-B test score MLflow recorded.

    python scripts/llm_export_check.py sqlite:///outputs/mlflow.db   # experiment llm-tiny-decoder
"""

import os
import sys

import mlflow
import torch
from mlflow import MlflowClient
from sentence_transformers import SentenceTransformer

from csetrain.config import ASSETS_DIR
from csetrain.eval.sts import STSEvaluator
from csetrain.modeling.export import load_sentence_encoder

TEXTS = ["A man is playing a guitar.", "A woman slices an onion.", "Two dogs run on grass."]


class STEncoder:
    """The evaluator's one call, encode(sentences, batch_size, progress), on sentence-transformers."""

    def __init__(self, model):
        self.model = model

    def encode(self, sentences, batch_size, progress):
        return torch.from_numpy(self.model.encode(sentences, batch_size=batch_size))


def main(uri: str) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("llm-tiny-decoder")
    run = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]
    print("run", run.info.run_id, run.info.status)
    folder = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="model", tracking_uri=uri
    )
    print("model folder:", sorted(os.listdir(folder)))
    st = SentenceTransformer(folder, device="cpu")
    ours = load_sentence_encoder(folder).encode(TEXTS)
    print("max |ST - csetrain| =", (torch.from_numpy(st.encode(TEXTS)) - ours).abs().max().item())
    print("is_causal:", st[0].auto_model.config.is_causal, "|", st[1])
    evaluator = STSEvaluator(
        tasks=["stsb"],
        split="test",
        protocol="senteval",
        data_dir=str(ASSETS_DIR / "sample"),
        batch_size=128,
        progress=False,
        diagnostics=False,
    )
    score = evaluator(STEncoder(st)).primary
    logged = run.data.metrics["test/senteval/stsb/spearman"]
    print(
        f"STS-B test spearman (senteval): from SentenceTransformer {score:.4f}, MLflow {logged:.4f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
