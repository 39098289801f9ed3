"""Dask scale-out with the real Encoder (issue 13 item 5).

An Encoder pickles as what it was loaded from (path, options, fingerprint),
re-opens the folder where it is unpickled and refuses a folder whose
fingerprint changed; LayerCache.build(client=...) runs on a real
distributed.LocalCluster with process workers and with thread workers (one
Encoder per worker thread, never the driver's object) and gives the cache a
local build gives, within the numerical contract."""
import json
import logging
import os
import pickle
import shutil
import threading

import numpy as np
import pytest

import engine_py
from engine_py import Encoder, LayerCache
from engine_py._guard import in_use_guard
from engine_py.datasets import demo_graph
from engine_py.encoder import PATH_MAP_ENV, EncoderSpec
from engine_py.models import minilm_path

try:
    from engine_py.testing import assert_states_close
except ImportError:   # the contract helper of docs/DESIGN.md, until it is on this branch
    def assert_states_close(actual, expected):
        """float16 cache rows built in other batches / processes: values that
        differ by ~1e-6 relative before rounding may round to neighbouring
        float16 values, i.e. at most one float16 ulp apart."""
        np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                                   rtol=2.0 ** -10, atol=2.0 ** -24)

LAYERS = [0, 3, 6]


@pytest.fixture(scope="module")
def texts():
    return list(demo_graph().texts[:64])


@pytest.fixture(scope="module")
def encoder():
    return Encoder.from_pretrained(minilm_path(), max_length=64)


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory, encoder, texts):
    path = tmp_path_factory.mktemp("local") / "local.egc"
    return LayerCache.build(path, encoder, texts, layers=LAYERS, dtype="float16", batch_size=8)


def _assert_same_cache(c, ref):
    assert c.complete and c.verify()
    assert c.fingerprint == ref.fingerprint and c.layers == ref.layers and c.num_nodes == ref.num_nodes
    ids = np.arange(ref.num_nodes)
    for l in LAYERS:
        assert_states_close(c.layer(l), ref.layer(l))
        np.testing.assert_array_equal(np.isfinite(c.gather(l, ids)), True)


# ------------------------------------------------------------------ pickling

def test_encoder_pickles_as_its_source(encoder, texts):
    data = pickle.dumps(encoder)
    assert len(data) < 4096        # path, options and fingerprint; never the ~90 MB of weights
    assert encoder._fingerprint is not None     # computed once, kept for the next pickle
    spec = pickle.loads(pickle.dumps(encoder._spec()))
    assert isinstance(spec, EncoderSpec) and spec.path == os.path.abspath(encoder.path)
    assert spec.max_length == 64 and spec.normalize == encoder.normalize
    assert spec.fingerprint == encoder.fingerprint()
    other = pickle.loads(data)
    assert isinstance(other, Encoder) and other is not encoder and other._model is not encoder._model
    assert other.max_length == 64 and other.normalize == encoder.normalize
    assert other.fingerprint() == encoder.fingerprint()
    # same weights, same call: bit-identical
    np.testing.assert_array_equal(other.encode_layers(texts[:8], layers=LAYERS),
                                  encoder.encode_layers(texts[:8], layers=LAYERS))


def test_pickle_keeps_options_changed_after_loading(tmp_path):
    enc = Encoder.from_pretrained(minilm_path(), max_length=32)
    enc.normalize = not enc.normalize
    other = pickle.loads(pickle.dumps(enc))
    assert other.normalize == enc.normalize and other.max_length == 32
    assert other.fingerprint() == enc.fingerprint()


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(minilm_path(), dst)
    return dst


def _tensor_offset(path, name):
    """File offset of the first byte of tensor `name` in a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return 8 + n + header[name]["data_offsets"][0]


def test_unpickling_refuses_a_changed_model_file(model_copy):
    enc = Encoder.from_pretrained(model_copy, max_length=64)
    data = pickle.dumps(enc)
    weights = model_copy / "model.safetensors"
    # one weight the encoder uses changes in its last bit (the pooler's would
    # not count: its tensors are not part of the states, nor of the fingerprint)
    at = _tensor_offset(weights, "encoder.layer.0.attention.self.query.weight")
    with open(weights, "r+b") as f:
        f.seek(at)
        old = f.read(1)
        f.seek(at)
        f.write(bytes([old[0] ^ 0x01]))
    with pytest.raises(ValueError, match="is not what was pickled .*fingerprint"):
        pickle.loads(data)
    with open(weights, "r+b") as f:     # restored: accepted again
        f.seek(at)
        f.write(old)
    assert pickle.loads(data).fingerprint() == enc.fingerprint()


def test_unpickling_refuses_a_changed_tokenizer(model_copy):
    enc = Encoder.from_pretrained(model_copy, max_length=64)
    data = pickle.dumps(enc)
    vocab = model_copy / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("\nthe\n", "\nteh\n", 1), encoding="utf-8")
    with pytest.raises(ValueError, match="not what was pickled"):
        pickle.loads(data)


def test_unpickling_where_the_folder_is_elsewhere(model_copy, tmp_path, monkeypatch):
    enc = Encoder.from_pretrained(model_copy, max_length=64)
    data = pickle.dumps(enc)
    moved = tmp_path / "elsewhere" / "minilm"
    moved.parent.mkdir()
    model_copy.rename(moved)
    monkeypatch.delenv(PATH_MAP_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=f"does not exist on this machine.*{PATH_MAP_ENV}"):
        pickle.loads(data)
    # the worker's own mapping: SRC=DST, several separated by os.pathsep
    monkeypatch.setenv(PATH_MAP_ENV, os.pathsep.join([f"/nonexistent=/x", f"{tmp_path}={tmp_path / 'elsewhere'}"]))
    with pytest.raises(FileNotFoundError, match="mapped from"):
        pickle.loads(data)      # tmp/model -> tmp/elsewhere/model: not there
    monkeypatch.setenv(PATH_MAP_ENV, f"{model_copy}={moved}")
    other = pickle.loads(data)
    assert other.path == str(moved) and other.fingerprint() == enc.fingerprint()


def test_one_encoder_per_thread(encoder):
    spec = encoder._for_workers()
    mine = spec._on_worker()
    assert mine is spec._on_worker() and mine is not encoder
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(spec._on_worker()))
    t.start()
    t.join()
    assert theirs[0] is not mine and theirs[0].fingerprint() == encoder.fingerprint()
    engine_py.encoder._local.encoders.clear()   # this (main) thread's copy: not kept for the session


# --------------------------------------------------------- LocalCluster builds

distributed = pytest.importorskip("distributed")


@pytest.fixture
def one_thread():
    old = engine_py.get_num_threads()
    engine_py.set_num_threads(1)   # two workers on two cores: one core thread each
    yield
    engine_py.set_num_threads(old)


def _cluster(**kw):
    return distributed.LocalCluster(dashboard_address=None, silence_logs=logging.ERROR, **kw)


def test_build_on_local_cluster_with_worker_processes(tmp_path, encoder, texts, local_cache):
    cluster = _cluster(n_workers=2, threads_per_worker=1, processes=True)
    try:
        with distributed.Client(cluster) as client:
            c = LayerCache.build(tmp_path / "c.egc", encoder, texts, layers=LAYERS, dtype="float16",
                                 batch_size=8, client=client, max_in_flight=4)
            _assert_same_cache(c, local_cache)
            # workers writing their rows into the file themselves (same machine here)
            d = LayerCache.build(tmp_path / "d.egc", encoder, texts, layers=LAYERS, dtype="float16",
                                 batch_size=8, client=client, worker_writes=True)
            _assert_same_cache(d, local_cache)
            # every worker process opened the model itself (nothing was pickled but the spec)
            pids = client.run(os.getpid)
            assert len(pids) == 2 and os.getpid() not in pids.values()
    finally:
        cluster.close()


@pytest.mark.parametrize("kind", ["dask-threads", "thread-pool"])
def test_build_with_thread_workers(tmp_path, encoder, texts, local_cache, one_thread, kind):
    # The driver's Encoder is held busy by another thread for the whole build:
    # a worker that used it (thread workers share the driver's objects) would
    # get "already in use". Each worker thread opens its own.
    guard = in_use_guard(encoder, "this Encoder")
    held, release = threading.Event(), threading.Event()

    def hold():
        with guard:
            held.set()
            release.wait(120)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    try:
        if kind == "dask-threads":
            cluster = _cluster(n_workers=2, threads_per_worker=2, processes=False)
            try:
                with distributed.Client(cluster) as client:
                    c = LayerCache.build(tmp_path / "c.egc", encoder, texts, layers=LAYERS,
                                         dtype="float16", batch_size=8, client=client, max_in_flight=4)
            finally:
                cluster.close()
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(2) as ex:
                c = LayerCache.build(tmp_path / "c.egc", encoder, texts, layers=LAYERS,
                                     dtype="float16", batch_size=8, client=ex, max_in_flight=4)
        with pytest.raises(RuntimeError, match="already in use"):   # the guard was really held
            encoder.encode(texts[:1])
    finally:
        release.set()
        holder.join()
    _assert_same_cache(c, local_cache)
