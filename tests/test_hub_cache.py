"""``timm:`` models on an offline machine, the way a user gets them there: ``hf download`` on a
connected machine fills a Hugging Face cache, the cache is copied, and with ``HF_HUB_OFFLINE=1``
the model loads through huggingface_hub's and timm's own loaders. A copy missing a piece gives
one line naming the repo, the missing piece and the fix.

The "hub" is a local HTTP stand-in serving the packaged ImageNet efficientnet-lite0 weights
(timm key names, written by timm's ``save_for_hf``) under the real repo id, so the download is
huggingface_hub's own code end to end and ``timm:tf_efficientnet_lite0.in1k`` must equal the
packaged ``efficientnet_lite0.in1k`` exactly.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from click.testing import CliRunner

from tlbench.errors import UserError

REPO_ID = "timm/tf_efficientnet_lite0.in1k"
MODEL = "timm:tf_efficientnet_lite0.in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PX = 32

SUITE = f"""
name = "hub"
seeds = [0]
[[models]]
name = "efficientnet_lite0.in1k"
input_size = {PX}
[[models]]
name = "{MODEL}"
input_size = {PX}
[[datasets]]
name = "digits"
train_size = 200
val_size = 100
test_size = 200
[[strategies]]
name = "linear-probe"
l2 = [10.0]
refine_steps = 0
refit = false
"""


# -- a stand-in for huggingface.co: the endpoints `hf download` and `hf_hub_download` call ------


def serve_hub(repo_id: str, folder: Path) -> http.server.ThreadingHTTPServer:
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _reply(self, code: int, body: bytes, headers: dict, head: bool) -> None:
            self.send_response(code)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = urlparse(self.path).path
            as_json = {"Content-Type": "application/json"}
            if path == f"/api/models/{repo_id}/revision/main":
                info = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
                return self._reply(200, json.dumps(info).encode(), as_json, head)
            if path.startswith(f"/api/models/{repo_id}/tree/"):
                tree = [
                    {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for n, b in files.items()
                ]
                return self._reply(200, json.dumps(tree).encode(), as_json, head)
            prefix = f"/{repo_id}/resolve/"
            name = path[len(prefix) :].partition("/")[2] if path.startswith(prefix) else None
            if name in files:
                etag = f'"{hashlib.sha256(files[name]).hexdigest()}"'
                return self._reply(200, files[name], {"X-Repo-Commit": COMMIT, "ETag": etag}, head)
            self._reply(404, b"", {"X-Error-Code": "EntryNotFound"}, head)

        def do_HEAD(self):  # noqa: N802 (http.server's name)
            self._route(head=True)

        def do_GET(self):  # noqa: N802
            self._route(head=False)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# -- fixtures: the hub's repo, a connected machine's cache, an offline machine's copy ------------


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory) -> Path:
    """What the hub holds: the packaged ImageNet lite0 weights mapped onto timm's
    tf_efficientnet_lite0 (``map_by_order``), saved by timm's ``save_for_hf``."""
    from timm.models._hub import save_for_hf

    from tlbench.builtin.model_sources import PACKAGED, packaged_model
    from tlbench.cache import Cache
    from tlbench.components import BuildContext

    packaged = packaged_model(
        PACKAGED["efficientnet_lite0.in1k"],
        None,
        {},
        BuildContext(cache=Cache(tmp_path_factory.mktemp("convert")), device="cpu"),
    )
    folder = tmp_path_factory.mktemp("hub") / REPO_ID
    save_for_hf(packaged.build_with_source_head(), folder, safe_serialization=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return folder


@pytest.fixture(scope="module")
def connected_home(hub_repo, tmp_path_factory) -> Path:
    """HF_HOME on a connected machine after the documented `hf download timm/<repo>`."""
    home = tmp_path_factory.mktemp("connected") / "huggingface"
    server = serve_hub(REPO_ID, hub_repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
    hf = Path(sys.executable).with_name("hf")
    try:
        done = subprocess.run(
            [str(hf), "download", REPO_ID], env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    return home


@pytest.fixture
def offline_repo(connected_home, tmp_path, monkeypatch) -> Path:
    """The cache copied to an offline machine as docs/models.md says (links kept, like cp -a),
    HF_HOME pointing at it and HF_HUB_OFFLINE=1. Returns the repo's folder in the copy."""
    home = tmp_path / "offline-huggingface"
    shutil.copytree(connected_home, home, symlinks=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub" / "models--timm--tf_efficientnet_lite0.in1k"


def _request(tmp_path: Path, suite: Path):
    from tlbench.planning import RunRequest

    return RunRequest(
        suite=suite,
        device="cpu",
        cache_dir=tmp_path / "cache",
        out_dir=tmp_path / "run",
        results_root=tmp_path / "results",
    )


def _load(name: str, tmp_path: Path):
    from tlbench.cache import Cache
    from tlbench.components import BuildContext
    from tlbench.plugins import load_plugins

    registry = load_plugins(builtins=("tlbench.builtin.models",), load_entrypoints=False).registry
    spec, argument = registry.lookup("model", name)
    return spec.spec.load_factory()(
        argument, {"input_size": PX}, BuildContext(cache=Cache(tmp_path / "c"), device="cpu")
    )


# -- the path a user takes ------------------------------------------------------------------------


def test_the_downloaded_cache_is_huggingface_hubs_own_layout(connected_home):
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir(connected_home / "hub")
    (repo,) = cache.repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs) == (
        REPO_ID,
        COMMIT,
        frozenset({"main"}),
    )
    assert sorted(f.file_name for f in revision.files) == ["config.json", "model.safetensors"]
    assert all(f.file_path.is_symlink() and f.blob_path.is_file() for f in revision.files)


def test_timm_model_from_an_offline_cache_equals_the_packaged_model(offline_repo, tmp_path):
    import torch

    from tlbench.predictions import read_predictions
    from tlbench.runner import run_suite

    suite = tmp_path / "hub.toml"
    suite.write_text(SUITE)
    outcome = run_suite(_request(tmp_path, suite))
    records = {r["model"]: r for r in outcome.records}
    assert [r["status"] for r in records.values()] == ["ok", "ok"], [
        r.get("error") for r in records.values()
    ]
    packaged, hub = records["efficientnet_lite0.in1k"], records[MODEL]
    assert hub["metrics"]["top1"] == packaged["metrics"]["top1"]
    for record in (hub, packaged):
        del record["hparams"]["tuning"]["train_s"]  # wall time
    assert hub["hparams"] == packaged["hparams"]
    ours, theirs = (read_predictions(outcome.run_dir, r) for r in (hub, packaged))
    assert np.array_equal(ours.pred, theirs.pred) and np.array_equal(
        ours.true_prob, theirs.true_prob
    )

    blob = (offline_repo / "snapshots" / COMMIT / "model.safetensors").resolve()
    assert hub["model_card"]["weights_source"] == f"hf-hub:{REPO_ID}"
    assert hub["model_card"]["weights_sha256"] == hashlib.sha256(blob.read_bytes()).hexdigest()

    images = torch.rand(4, 3, PX, PX, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = [_load(name, tmp_path).build(0)(images) for name in (MODEL, packaged["model"])]
    assert features[0].shape == (4, 1280) and torch.equal(*features)


def test_list_names_the_timm_models_the_offline_cache_holds(offline_repo):
    from huggingface_hub import try_to_load_from_cache

    from tlbench.builtin.models import cached_hub_weights, cached_timm_models, hub_cache_root
    from tlbench.plugins import load_plugins

    assert cached_timm_models() == [MODEL]
    # The import-free reading of the cache agrees with huggingface_hub's own.
    assert cached_hub_weights(REPO_ID) == Path(
        try_to_load_from_cache(REPO_ID, "model.safetensors", cache_dir=hub_cache_root())
    )
    registry = load_plugins(builtins=("tlbench.builtin.models",), load_entrypoints=False).registry
    timm_spec = registry.lookup("model", "timm:x")[0].spec
    assert timm_spec.availability("tf_efficientnet_lite0.in1k") is True
    listed = timm_spec.availability()
    assert "HF_HUB_OFFLINE is set" in listed and f"cached for offline use: {MODEL}" in listed
    assert timm_spec.availability("resnet18.a1_in1k").startswith(
        "HF_HUB_OFFLINE is set and timm/resnet18.a1_in1k is not in the Hugging Face cache"
    )


# -- a copy missing a piece -----------------------------------------------------------------------


def _weights_link(repo: Path) -> Path:
    return repo / "snapshots" / COMMIT / "model.safetensors"


BROKEN_COPIES = {
    # what went wrong: (how to break the copy, what the line must say)
    "weights file left out": (
        lambda repo: _weights_link(repo).unlink(),
        "has none of model.safetensors, pytorch_model.bin",
    ),
    "blobs not copied": (
        lambda repo: shutil.rmtree(repo / "blobs"),
        "model.safetensors points to a missing file",
    ),
    "refs not copied": (lambda repo: shutil.rmtree(repo / "refs"), "has no refs/main"),
    "repo not copied": (shutil.rmtree, "is not in the Hugging Face cache"),
}


@pytest.mark.parametrize("broken", BROKEN_COPIES)
def test_a_cache_copy_missing_a_piece_gives_one_line_naming_repo_piece_and_fix(
    broken, offline_repo, tmp_path
):
    from tlbench.cli import cli

    damage, says = BROKEN_COPIES[broken]
    damage(offline_repo)
    fix = f"on a connected machine run `hf download {REPO_ID}` and copy models--timm--tf_efficientnet_lite0.in1k"

    with pytest.raises(UserError) as info:  # loading the model (the cell's own path)
        _load(MODEL, tmp_path)
    message = str(info.value)
    assert "\n" not in message and REPO_ID in message and says in message and fix in message

    suite = tmp_path / "hub.toml"  # a run refuses before any work, in one line, exit 2
    suite.write_text(SUITE)
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and MODEL in lines[0] and says in lines[0] and fix in lines[0]
    assert not (tmp_path / "run" / "cells.jsonl").exists()
