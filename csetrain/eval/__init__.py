"""Evaluation: STS in SentEval's and MTEB's protocols (sts.py); mteb adapter lives in mteb.py."""
