"""Packing invariant: a packed row's loss equals the token-weighted loss of its documents
run one at a time."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.data import pipeline
from jaxlm.models import Decoder, from_config, registry
from jaxlm.objectives import clm


@pytest.mark.parametrize("style,options", [("gpt2", {}), ("llama", {"num_kv_heads": 2}),
                                           ("neox", {"rope_fraction": 0.5,
                                                     "parallel_residual": True})])
def test_packed_loss_equals_token_weighted_document_losses(style, options):
  cfg = from_config(registry.model_config(
      "gpt2-124m", **{**dict(style=style, num_layers=2, num_heads=4, num_kv_heads=0,
                           embed_dim=32, mlp_dim=64, max_seq_len=32), **options}), vocab_size=64)
  model = Decoder(cfg, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  docs = [rng.integers(4, 64, n).tolist() for n in (7, 12, 5)]
  packed = pipeline.pack_documents(docs, seq_len=24, pad_id=0)
  assert packed["tokens"].shape[0] == 1  # all three share one row (plus padding)
  loss_fn = nnx.jit(lambda m, b: clm.loss_fn(m, b, None))  # eager: an XLA program an op
  loss, m = loss_fn(model, {k: jnp.asarray(v) for k, v in packed.items()})

  total, count = 0.0, 0
  for doc in docs:
    alone = pipeline.rows_from_windows(np.array([doc]), np.ones((1, len(doc)), np.int32))
    doc_loss, dm = loss_fn(model, {k: jnp.asarray(v) for k, v in alone.items()})
    total += float(doc_loss) * float(dm["tokens"])
    count += float(dm["tokens"])
  assert float(m["tokens"]) == count == sum(len(d) - 1 for d in docs)
  np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)
