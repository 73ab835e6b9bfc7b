"""Host memory: with keep_freed_host_memory, CPU forwards stop page-faulting their activation
buffers in again on every batch (measured in a fresh process: the setting is process-wide)."""

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, torch
from csetrain.modeling.backbones import tiny
from csetrain.modeling.encoder import SentenceEncoder
from csetrain.runtime import keep_freed_host_memory

torch.set_num_threads(1)
encoder = SentenceEncoder(tiny(384, 2, 12, 1536), pooler="mean")
texts = ["word " * 300 + str(i) for i in range(8)]  # 8 x 256 tokens: MiB-sized activations

def faults():
    encoder.encode(texts)  # warm-up: the first batches may fault legitimately
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        encoder.encode(texts)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

not_cpu = keep_freed_host_memory(torch.device("meta"))  # any other device: nothing changes
released = faults()
kept = keep_freed_host_memory(torch.device("cpu"))
print(not_cpu, released, kept, faults())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)
def test_kept_memory_stops_page_faults_on_every_batch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    not_cpu, released, kept, with_kept = out.stdout.split()
    assert (not_cpu, kept) == ("False", "True"), out.stdout
    # glibc's defaults re-fault the freed activations (thousands of 4 KiB pages per encode)
    assert int(released) > 3000, out.stdout
    assert int(with_kept) < int(released) / 10, out.stdout
