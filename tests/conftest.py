"""Shared fixtures: small seeded models, built the same way in xattn and x-transformers."""
from __future__ import annotations

import pytest
import torch

import xattn


def tiny_config(kind: str = "Decoder", **layer_kwargs) -> dict:
    """A config both libraries accept: 3 layers, 4 heads of 8 features, vocabulary of 23."""
    layers = {**dict(kind=kind, dim=32, depth=3, heads=4, attn_dim_head=8), **layer_kwargs}
    return dict(num_tokens=23, max_seq_len=16, attn_layers=layers)


def reference_model(config: dict) -> torch.nn.Module:
    """The x-transformers TransformerWrapper for an xattn-style config, every parameter moved off its
    initial value (norm gains start at exactly one, which would hide a wrongly mapped gain)."""
    import x_transformers  # only the tests that compare with it need it

    config = dict(config)
    layers = dict(config.pop("attn_layers"))
    kind = getattr(x_transformers, layers.pop("kind"))
    model = x_transformers.TransformerWrapper(attn_layers=kind(**layers), **config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def form_options(residual: bool = False, selective: bool = False, causal: bool = True,
                 position: str = "absolute") -> list[str]:
    """The fresh-model form's ticked options for a model described the old way (position: absolute, rotary, ALiBi)."""
    ticked = {"residual_attn": residual, "attn_selective": selective, "causal": causal, "pre_norm": True,
              "use_abs_pos_emb": position == "absolute", "rotary_pos_emb": position == "rotary",
              "alibi_pos_bias": position == "ALiBi"}
    known = ("absolute", "rotary", "ALiBi")
    return [name for name, on in ticked.items() if on] + ([] if position in known else [position])


@pytest.fixture
def tiny_decoder() -> xattn.TransformerWrapper:
    torch.manual_seed(0)
    return xattn.build(tiny_config("Decoder", residual_attn=True, attn_selective=True)).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def server():
    """The app on a free loopback port, for one test module."""
    from app import main as app_main
    from app import views
    demo, url = app_main.launch(port=None, block=False)
    yield url
    demo.close()
    views.AHEAD.stop()              # the next module's views, called directly, make no work ahead


@pytest.fixture
def client(server: str):
    """A fresh gradio client: a browser session of its own."""
    from gradio_client import Client
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def default():
    """The bundled model the app opens on."""
    from app import models
    return models.bundled(models.default_name())
