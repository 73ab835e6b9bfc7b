"""CPU inference linears through oneDNN (modeling/onednn.py): within float32's error bound of
the exact product, exact where float32 arithmetic is exact, used by encode() and undone after
it (also after an error), skipped wherever it would change what runs."""

import copy

import pytest
import torch
from torch import nn

from csetrain.modeling import onednn
from csetrain.modeling.encoder import SentenceEncoder

from .helpers import sharded_linear
from .tolerances import EPS32

pytestmark = pytest.mark.skipif(
    not onednn._ops_available(), reason="this torch build has no oneDNN linear ops"
)


@pytest.fixture(autouse=True)
def enabled(monkeypatch):
    """On by default only on AVX-512 CPUs; the mechanism is tested on any."""
    monkeypatch.setattr(onednn, "ENABLED", True)


def _patched(module: nn.Module) -> list[bool]:
    return ["forward" in m.__dict__ for m in module.modules() if type(m) is nn.Linear]


@torch.no_grad()
def test_within_float32_bound_of_the_exact_product():
    torch.manual_seed(0)
    layer, x = nn.Linear(1536, 384), torch.randn(3, 7, 1536)  # 3-D input, as in a transformer
    exact = x.double() @ layer.weight.double().T + layer.bias.double()
    # Any order of summing K float32 products is within (K + 1) eps of the sum of magnitudes.
    magnitude = x.double().abs() @ layer.weight.double().abs().T + layer.bias.double().abs()
    with onednn.prepacked_linears(layer):
        assert _patched(layer) == [True]
        y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (3, 7, 384)
    assert ((y.double() - exact).abs() <= (1536 + 1) * EPS32 * magnitude).all()


@torch.no_grad()
def test_exact_on_integers_without_bias():
    layer, x = nn.Linear(64, 16, bias=False), torch.randint(-8, 9, (5, 64)).float()
    layer.weight.copy_(torch.randint(-8, 9, layer.weight.shape))  # sums < 2**24: exact
    with onednn.prepacked_linears(layer):
        assert torch.equal(layer(x), x @ layer.weight.T)


@torch.no_grad()
def test_weights_are_reread_each_block_and_forward_restored_after_an_error():
    layer, x = nn.Linear(8, 4), torch.ones(2, 8)
    with pytest.raises(RuntimeError), onednn.prepacked_linears(layer):
        raise RuntimeError("boom")
    assert _patched(layer) == [False]
    layer.weight.fill_(1.0)
    layer.bias.zero_()
    with onednn.prepacked_linears(layer):
        assert torch.equal(layer(x), torch.full((2, 4), 8.0))


def test_skipped_where_it_would_change_what_runs():
    layer = nn.Linear(8, 4)
    with onednn.prepacked_linears(layer):  # gradients on: training must see nn.Linear
        assert _patched(layer) == [False]
    bf16 = torch.autocast("cpu", torch.bfloat16)
    with torch.no_grad(), bf16, onednn.prepacked_linears(layer):  # it would bypass the cast
        assert _patched(layer) == [False]
    with torch.no_grad():
        double = nn.Linear(8, 4).double()
        with onednn.prepacked_linears(double):
            assert _patched(double) == [False]


def test_sharded_fsdp_weights_are_skipped():
    """An FSDP2 parameter is a DTensor shard: its reordered copy would be the shard's alone."""
    with sharded_linear() as layer, torch.no_grad(), onednn.prepacked_linears(layer):
        assert _patched(layer) == [False]


def test_encode_runs_every_plain_linear_through_onednn(tiny_backbone):
    encoder = SentenceEncoder(copy.deepcopy(tiny_backbone), pooler="mean").eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a fresh BERT's biases are zero: make every term count
        for p in encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen = []

    def recording(input_ids, attention_mask, prompt_length=None):
        seen.append(_patched(encoder.transformer))
        return encoder.inference(input_ids, attention_mask, prompt_length=prompt_length)

    texts = ["a cat sits on the mat .", "two words", "hello there, general"]
    fast = encoder.encode(texts, embed=recording)
    assert seen and all(flags and all(flags) for flags in seen)
    assert not any(_patched(encoder.transformer))
    with torch.no_grad():
        plain = torch.cat([encoder.inference(**_ids(encoder, t)) for t in texts])
        reference = copy.deepcopy(encoder).double()
        exact = torch.cat([reference.inference(**_ids(reference, t)) for t in texts])
    # Both float32 paths sit equally close to the float64 one: a wrong kernel (a dropped bias,
    # a transposed weight) would be off by O(1), not by rounding.
    assert (fast.double() - exact).abs().max() <= 4 * (plain.double() - exact).abs().max() + EPS32


def test_linear_subclasses_keep_their_own_forward():
    class Scaled(nn.Linear):  # e.g. a quantized or adapter layer with its own forward
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Scaled(8, 8), nn.Linear(8, 4))
    with torch.no_grad(), onednn.prepacked_linears(model):
        assert ["forward" in m.__dict__ for m in model] == [False, True]


def _ids(encoder, sentence):
    batch = encoder.tokenize([sentence])
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
