"""Data-parallel and FSDP training on a mesh of 8 simulated CPU devices (in a subprocess:
`--xla_force_host_platform_device_count` must be set before JAX starts and must not leak into
the other tests), and the sharding rule itself."""

import json
import os
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import eqx_bigbird as eb
from eqx_bigbird.sharding import leaf_spec

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "sharding_check.py"), str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_step_equals_single_device(mesh_run):
    """4x2 and 8x1 meshes, replicated and FSDP parameters: same losses (two steps) and same
    parameters and Adam moments as one device, to 1e-5."""
    assert len(mesh_run["runs"]) == 5
    for run in mesh_run["runs"]:
        ref = mesh_run["ref_loss"][str(run["accumulation_steps"])]
        np.testing.assert_allclose(run["loss"], ref, rtol=1e-5, err_msg=str(run["mesh"]))
        assert run["max_param_diff"] < 1e-5, run
        assert run["max_opt_state_diff"] < 1e-5, run


def test_leaves_are_sharded_as_requested(mesh_run):
    """The tiny model (hidden 32, 2 layers, vocab 64; sharding threshold 256 elements): stacked
    (2, 32, 32) query weights split on their output axis, never the layer axis; the (64, 32)
    word embeddings on the vocabulary; (2, 32) biases replicated; Adam's moments like their
    parameters; the batch of 16 split 8 ways; every leaf's sharding the rule's."""
    shapes = {
        (8, 1, False): ([2, 32, 32], [64, 32]),
        (8, 1, True): ([2, 4, 32], [8, 32]),
        (4, 2, False): ([2, 32, 32], [64, 32]),
        (4, 2, True): ([2, 4, 32], [8, 32]),
        (4, 2, "fsdp"): ([2, 16, 32], [32, 32]),  # split over fsdp=2, replicated over data=4
    }
    for run in mesh_run["runs"]:
        query, embedding = shapes[(*run["mesh"], run["fsdp"])]
        assert run["shardings_as_requested"], run
        assert run["query_shard_shapes"] == [query], run
        assert run["mu_shard_shapes"] == [query], run
        assert run["embedding_shard_shapes"] == [embedding], run
        assert run["bias_shard_shapes"] == [[2, 32]], run
        assert run["batch_shard_shapes"] == [[2, 32]], run


def test_checkpoint_from_sharded_model_loads_unsharded(mesh_run):
    ck = mesh_run["checkpoint"]
    assert ck["max_diff"] == 0.0 and ck["single_device"] and ck["same_structure"]
    assert ck["resharded_query_shard_shapes"] == [[2, 4, 32]] and ck["resharded_max_diff"] == 0.0
    # ... and in a process that has never seen a mesh.
    model = eb.load(ck["file"])
    assert isinstance(model, eb.BigBirdForMaskedLM)
    for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)):
        assert len(x.devices()) == 1 and np.isfinite(np.asarray(x)).all()


def test_leaf_spec_rule():
    axes = ("data", "fsdp")
    assert leaf_spec((12, 768, 3072), 8, axes, stacked=True) == P(None, None, axes)
    assert leaf_spec((50358, 768), 8, ("data",)) == P(None, "data")  # vocab not divisible
    assert leaf_spec((8, 768), 8, ("data",), stacked=True) == P()  # too small
    assert leaf_spec((16, 1000, 1000), 16, ("data",), stacked=True) == P()  # nothing divides
    assert leaf_spec((16, 1000, 1000), 8, ("data",), stacked=True) == P(None, "data", None)
    assert leaf_spec((768, 3072), 8, ()) == P()  # replicated


def test_make_mesh_checks_device_count():
    assert eb.make_mesh().shape == {"data": jax.device_count(), "fsdp": 1}
    with pytest.raises(ValueError, match="does not cover"):
        eb.make_mesh(data=jax.device_count() + 1)
