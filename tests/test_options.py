"""Execution options (gradient checkpointing, compute dtype, random-attention mode), runtime shape
checking, and gradient parity with HF Flax."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird import sparse_attention as sa

CONFIG = eb.BigBirdConfig(
    vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=48, max_position_embeddings=256, block_size=4, num_random_blocks=2,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)
IDS = jr.randint(jr.PRNGKey(0), (64,), 0, 60)


def loss_and_grads(model, key):
    def loss(m):
        return jnp.mean(m(IDS, key=key).last_hidden_state ** 2)

    return eqx.filter_value_and_grad(loss)(model)


@pytest.mark.parametrize("policy", sorted(eb.CHECKPOINT_POLICIES))
def test_gradient_checkpointing_changes_nothing_but_memory(policy):
    model = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(1))
    remat = eb.with_options(model, gradient_checkpointing=policy)
    assert remat.options.gradient_checkpointing == policy
    assert remat.encoder.layers is model.encoder.layers  # weights shared, not copied
    (l1, g1), (l2, g2) = loss_and_grads(model, jr.PRNGKey(2)), loss_and_grads(remat, jr.PRNGKey(2))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_with_float32_parameters():
    model = eqx.nn.inference_mode(eb.BigBirdModel(CONFIG, key=jr.PRNGKey(1)))
    half = eb.with_options(model, compute_dtype="bfloat16")
    out32, out16 = model(IDS), half(IDS)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    assert half.encoder.layers.intermediate.weight.dtype == jnp.float32
    err = float(jnp.abs(out16.last_hidden_state.astype(jnp.float32) - out32.last_hidden_state).max())
    assert 0 < err < 0.1, err  # bf16 rounding, not a different computation
    _, grads = loss_and_grads(eqx.nn.inference_mode(half, False), jr.PRNGKey(3))
    assert grads.encoder.layers.intermediate.weight.dtype == jnp.float32
    with pytest.raises(ValueError, match="compute_dtype='int8'"):
        eb.with_options(model, compute_dtype="int8")


def test_fixed_random_attention_is_the_papers_plan():
    """"fixed": the paper's per-layer plan in training AND inference; "resample" (default): HF's
    eval plan in inference, a new plan for every key in training."""
    model = eb.BigBirdModel(CONFIG, key=jr.PRNGKey(1))
    fixed = eb.with_options(model, random_attention="fixed")
    plans = jnp.stack([sa.paper_plan(i, 2, 64, 4, 2) for i in range(2)])
    explicit = model(IDS, random_plan=plans, key=jr.PRNGKey(5)).last_hidden_state
    for key in (jr.PRNGKey(5), jr.PRNGKey(6)):
        np.testing.assert_allclose(fixed(IDS, key=key).last_hidden_state, explicit, atol=1e-6)
    np.testing.assert_allclose(
        fixed(IDS, inference=True).last_hidden_state,
        model(IDS, random_plan=plans, inference=True).last_hidden_state,
        atol=1e-6,
    )
    assert not np.allclose(
        model(IDS, key=jr.PRNGKey(5)).last_hidden_state,
        model(IDS, key=jr.PRNGKey(6)).last_hidden_state,
    )
    with pytest.raises(ValueError, match="random_attention='sometimes'"):
        eb.with_options(model, random_attention="sometimes")


def test_options_reach_the_encoder_inside_a_head():
    head = eb.BigBirdForMaskedLM(CONFIG, key=jr.PRNGKey(0))
    changed = eb.with_options(head, gradient_checkpointing="full", scan_layers=False)
    assert changed.bert.options.gradient_checkpointing == "full"
    assert not changed.bert.options.scan_layers
    ids = IDS
    a = eqx.nn.inference_mode(head)(ids).logits
    b = eqx.nn.inference_mode(changed)(ids).logits
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("head", ["PreTraining", "MaskedLM", "SequenceClassification", "MultipleChoice", "TokenClassification", "QuestionAnswering"])
def test_compute_dtype_reaches_every_head_module(head):
    """`with_options(head, compute_dtype="bfloat16")` runs the head's own modules (LM prediction
    head, classifiers, QA head, pooler) in bfloat16 too: under this suite's strict promotion a
    float32 head on bfloat16 states would raise, and the logits come out in bfloat16."""
    model = getattr(eb, f"BigBirdFor{head}")(CONFIG, key=jr.PRNGKey(0))
    half = eqx.nn.inference_mode(eb.with_options(model, compute_dtype="bfloat16"))
    ids = jnp.stack([IDS, IDS]) if head == "MultipleChoice" else IDS
    out = half(ids)
    logits = [v for k, v in vars(out).items() if k.endswith("logits")]
    assert logits and all(x.dtype == jnp.bfloat16 for x in logits), [x.dtype for x in logits]
    ref = eqx.nn.inference_mode(model)(ids)
    for k, v in vars(ref).items():
        if k.endswith("logits"):
            err = float(jnp.abs(getattr(out, k).astype(jnp.float32) - v).max())
            assert err < 0.1 * (1 + float(jnp.abs(v).max())), (k, err)


def test_type_checker_messages():
    """This suite runs with the jaxtyping hook and beartype, as a user turns them on with one line
    (`jaxtyping.install_import_hook(["eqx_bigbird"], "beartype.beartype")`): a wrong input fails
    at the call, naming the argument (or saying to vmap)."""
    model = eqx.nn.inference_mode(eb.BigBirdModel(CONFIG, key=jr.PRNGKey(0)))
    with pytest.raises(ValueError, match="use jax.vmap"):
        model(jnp.stack([IDS, IDS]))
    with pytest.raises(TypeError, match="attention_mask"):
        model(IDS, jnp.ones((63,), jnp.int32))
    with pytest.raises(TypeError, match="input_ids"):
        model(IDS.astype(jnp.float32))


def test_gradients_match_hf_flax(monkeypatch):
    """Dropout 0, the paper's plan injected into HF Flax and chosen on our side ("fixed"): the
    masked-LM loss's gradient for every parameter matches HF Flax's `jax.grad` within 1e-4
    relative (norm of difference over norm of reference), per leaf."""
    pytest.importorskip("flax")
    from transformers.models.big_bird import modeling_flax_big_bird as fx_mod

    from eqx_bigbird._export import hf_state
    from eqx_bigbird._hf_read import flax_to_torch_names

    from .hf_reference import flax_model, lenient_jax

    overrides = dict(
        block_size=4, num_random_blocks=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    fx, path = flax_model("FlaxBigBirdForMaskedLM", **overrides)
    seq, heads = 64, 2

    def paper(self, *args, **kwargs):
        layer = int(self.scope.path[self.scope.path.index("layer") + 1])
        return list(sa.paper_plan(layer, heads, seq, 4, 2, max_position_embeddings=512))

    monkeypatch.setattr(
        fx_mod.FlaxBigBirdBlockSparseAttention, "_bigbird_block_rand_mask_with_head", paper
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 99, (2, seq)).astype(np.int32)
    labels = np.where(rng.random((2, seq)) < 0.15, ids, -100)
    mask = np.ones((2, seq), np.int32)
    mask[1, -9:] = 0

    def hf_loss(params):
        logits = fx(
            ids, mask, params=params, train=True, dropout_rng=jr.PRNGKey(0),
            indices_rng=jr.PRNGKey(1),
        ).logits
        return eb.masked_lm_loss(logits, labels)

    with lenient_jax():
        hf_grads = jax.grad(hf_loss)(fx.params)
    flat = {}
    for path_, leaf in jax.tree_util.tree_flatten_with_path(hf_grads)[0]:
        flat["/".join(p.key for p in path_)] = np.asarray(leaf)
    hf_named = flax_to_torch_names(flat)

    ours = eb.with_options(
        eqx.nn.inference_mode(eb.BigBirdForMaskedLM.from_pretrained(path), False),
        random_attention="fixed",
    )

    @eqx.filter_grad
    def grads(m):
        logits = jax.vmap(lambda i, a: m(i, a, key=jr.PRNGKey(2)).logits)(ids, mask)
        return eb.masked_lm_loss(logits, labels)

    g = grads(ours)
    named = {name: value for name, value, _ in hf_state(eqx.combine(g, ours))}
    assert set(named) == set(hf_named), set(named) ^ set(hf_named)
    scale = np.median([np.linalg.norm(v) for v in hf_named.values()])
    worst = 0.0
    for name, ref in hf_named.items():
        if name.endswith("attention.self.key.bias"):
            # A key bias adds the same q.b to every score of a query's softmax: its gradient is
            # exactly zero, and both sides hold only rounding noise there.
            assert np.linalg.norm(named[name]) < 1e-5 * scale, name
            assert np.linalg.norm(ref) < 1e-5 * scale, name
            continue
        rel = np.linalg.norm(named[name] - ref) / np.linalg.norm(ref)
        assert rel <= 1e-4, f"{name}: relative gradient error {rel:.2e}"
        worst = max(worst, rel)
    print(f"worst relative gradient error {worst:.2e}")
