import argparse
import hashlib
import http.server
import io
import os
import pickle
import shutil
import tarfile
import threading

import numpy as np
import pytest

import fastnorm as fn
from fastnorm.data import cli as data_cli
from fastnorm.data import download as dl

N_PER_BATCH, N_TEST = 12, 10


# ---------------------------------------------------------------- a small CIFAR-10 of the official format

def raw_batches(seed=0):
    """name -> (uint8 data (n, 3072), labels list), the layout of the official pickles."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = N_TEST if name == "test_batch" else N_PER_BATCH
        batches[name] = (rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist())
    return batches


def write_folder(root, batches):
    os.makedirs(root, exist_ok=True)
    for name, (data, labels) in batches.items():
        with open(os.path.join(root, name), "wb") as f:
            # bytes keys, as the Python 2 pickles of the official archive have
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
    with open(os.path.join(root, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f, protocol=2)


@pytest.fixture(scope="module")
def batches():
    return raw_batches()


@pytest.fixture
def cifar_dir(tmp_path, batches):
    root = tmp_path / "cifar-10-batches-py"
    write_folder(str(root), batches)
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory, batches):
    """bytes of a cifar-10-python.tar.gz holding the small batches."""
    src = tmp_path_factory.mktemp("src")
    write_folder(str(src / "cifar-10-batches-py"), batches)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(src / "cifar-10-batches-py"), arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_load_cifar10_layout(cifar_dir, batches):
    Xtr, ytr, Xte, yte = fn.data.load_CIFAR10(cifar_dir)
    assert Xtr.shape == (5 * N_PER_BATCH, 32, 32, 3) and Xte.shape == (N_TEST, 32, 32, 3)
    assert Xtr.dtype == np.float64 and ytr.dtype == np.int64
    data3, labels3 = batches["data_batch_3"]
    # row i of a batch: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    first = 2 * N_PER_BATCH
    np.testing.assert_array_equal(Xtr[first, 4, 7], [data3[0, 4 * 32 + 7], data3[0, 1024 + 4 * 32 + 7],
                                                     data3[0, 2048 + 4 * 32 + 7]])
    assert ytr[first:first + N_PER_BATCH].tolist() == labels3
    assert yte.tolist() == batches["test_batch"][1]


def test_get_cifar10_data_split_and_mean(cifar_dir, batches):
    data = fn.data.get_CIFAR10_data(num_training=50, num_validation=8, num_test=6, root=cifar_dir)
    assert {k: v.shape for k, v in data.items()} == {
        "X_train": (50, 3, 32, 32), "y_train": (50,), "X_val": (8, 3, 32, 32), "y_val": (8,),
        "X_test": (6, 3, 32, 32), "y_test": (6,)}
    # channels first straight from the raw rows, then the training mean image subtracted
    raw = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32).astype(float)
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    mean = raw[:50].mean(axis=0)
    np.testing.assert_allclose(data["X_train"], raw[:50] - mean, atol=1e-10)
    np.testing.assert_allclose(data["X_val"], raw[50:58] - mean, atol=1e-10)
    test = batches["test_batch"][0].reshape(-1, 3, 32, 32)[:6]
    np.testing.assert_allclose(data["X_test"], test - mean, atol=1e-10)
    assert data["y_val"].tolist() == labels[50:58]
    plain = fn.data.get_CIFAR10_data(50, 8, 6, subtract_mean=False, root=cifar_dir)
    np.testing.assert_array_equal(plain["X_train"], raw[:50])
    single = fn.data.get_CIFAR10_data(50, 8, 6, root=cifar_dir, dtype=np.float32)
    assert single["X_val"].dtype == np.float32 and single["X_val"].flags.c_contiguous
    np.testing.assert_allclose(single["X_val"], raw[50:58] - mean, atol=1e-4)
    with pytest.raises(TypeError, match="float dtype with subtract_mean, got uint8"):
        fn.data.get_CIFAR10_data(50, 8, 6, root=cifar_dir, dtype=np.uint8)  # wrapped below zero


def test_cifar10_defaults_need_the_full_dataset(cifar_dir):
    with pytest.raises(ValueError, match=r"49000 \+ 1000.*60 training samples"):
        fn.data.get_CIFAR10_data(root=cifar_dir)


def test_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*fastnorm data download"):
        fn.data.load_CIFAR10(tmp_path / "nowhere")


def test_missing_and_corrupt_batch_named(cifar_dir):
    os.remove(cifar_dir / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3.*missing"):
        fn.data.load_CIFAR10(cifar_dir)
    good = (cifar_dir / "data_batch_2").read_bytes()
    (cifar_dir / "data_batch_3").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="data_batch_3 is corrupt.*fastnorm data download"):
        fn.data.load_CIFAR10(cifar_dir)


@pytest.mark.parametrize("labels", [[1.7, 2.2], ["1", "2"]])
def test_batch_with_labels_that_are_not_integers_is_refused(tmp_path, labels):
    # the dtype=int64 read truncated 1.7 to 1 and parsed "1": labels silently made up
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
    with pytest.raises(ValueError, match="data_batch_1 has labels of dtype .*, not integers"):
        fn.data.load_CIFAR_batch(path)


# ---------------------------------------------------------------- download from loopback

class ArchiveServer:
    """Serves `payload` at /cifar.tar.gz on 127.0.0.1; `plan` says how each request is spoiled."""

    def __init__(self, payload):
        self.payload, self.plan, self.requests = payload, [], 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                how = server.plan.pop(0) if server.plan else "ok"
                body = server.payload
                if how == "corrupt":
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if how == "truncate" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(archive):
    s = ArchiveServer(archive)
    yield s
    s.close()


def fetch(server, archive, dest, **kwargs):
    settings = {"url": server.url, "md5": hashlib.md5(archive).hexdigest(), "timeout": 10, **kwargs}
    return fn.data.download_cifar10(dest=dest, progress=False, backoff=0, **settings)


def test_download_retries_past_partial_and_corrupt(server, archive, tmp_path, batches):
    server.plan = ["truncate", "corrupt"]
    folder = fetch(server, archive, tmp_path, retries=2)
    assert server.requests == 3
    assert folder == str(tmp_path / "cifar-10-batches-py")
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no .part
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == archive
    _, ytr, _, _ = fn.data.load_CIFAR10(folder)
    assert ytr[:N_PER_BATCH].tolist() == batches["data_batch_1"][1]


def test_download_gives_up_and_keeps_nothing(server, archive, tmp_path):
    server.plan = ["corrupt", "truncate"]
    with pytest.raises(fn.data.DownloadError, match=r"(?s)after 2 attempts.*MD5.*attempt 2: .*got \d+ of \d+ bytes"):
        fetch(server, archive, tmp_path, retries=1)
    assert os.listdir(tmp_path) == []


def test_download_skips_when_present_and_replaces_bad_archive(server, archive, tmp_path):
    fetch(server, archive, tmp_path)
    assert server.requests == 1
    fetch(server, archive, tmp_path)
    assert server.requests == 1  # complete folder: nothing fetched
    # a damaged archive and no folder: the archive is fetched again, not extracted
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(archive[:-10])
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    fetch(server, archive, tmp_path)
    assert server.requests == 2
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == archive


def test_official_archive_constants():
    assert dl.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert dl.CIFAR10_URL.endswith("/cifar-10-python.tar.gz")


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="fastnorm")
    data_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_download_and_info(server, archive, tmp_path, capsys):
    md5 = hashlib.md5(archive).hexdigest()
    code = run_cli(["data", "download", "--dest", str(tmp_path), "--url", server.url, "--md5", md5, "--quiet"])
    assert code == 0
    assert "cifar-10-batches-py" in capsys.readouterr().out
    assert run_cli(["data", "info", "--dest", str(tmp_path)]) == 0
    assert "present" in capsys.readouterr().out
    assert run_cli(["data", "info", "--data-dir", str(tmp_path)]) == 0  # experiment's name for it
    assert "present" in capsys.readouterr().out
    server.plan = ["corrupt"] * 5
    code = run_cli(["data", "download", "--dest", str(tmp_path / "x"), "--url", server.url, "--md5", md5,
                    "--quiet", "--retries", "0"])
    assert code == 1
    assert "MD5" in capsys.readouterr().err


def test_bad_download_arguments_are_named_before_any_request(server, archive, tmp_path, capsys):
    # each was a traceback from socket.settimeout, urllib or os.makedirs
    for kwargs, match in [({"timeout": -5}, "timeout must be finite"), ({"timeout": float("nan")}, "timeout"),
                          ({"timeout": 0}, r"timeout must be finite and in \(0.0"),
                          ({"md5": "xyz"}, "md5 must be 32 hex digits"), ({"url": "notaurl"}, "url 'notaurl' is not a URL")]:
        with pytest.raises(ValueError, match=match):
            fetch(server, archive, tmp_path / "d", **kwargs)
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(fn.data.DownloadError, match="cannot use .*afile as the data folder"):
        fetch(server, archive, tmp_path / "afile")
    assert server.requests == 0 and sorted(os.listdir(tmp_path)) == ["afile"]
    code = run_cli(["data", "download", "--dest", str(tmp_path / "d"), "--url", server.url, "--timeout", "-5", "--quiet"])
    assert code == 2 and "timeout must be finite" in capsys.readouterr().err
    code = run_cli(["data", "download", "--dest", str(tmp_path / "afile"), "--url", server.url, "--quiet"])
    assert code == 1 and "as the data folder" in capsys.readouterr().err
    # an upper-case checksum is the same checksum
    fetch(server, archive, tmp_path / "d", md5=hashlib.md5(archive).hexdigest().upper())
    assert server.requests == 1


# ---------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits_raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def test_digits_dict_split_and_mean(digits_raw):
    images, target = digits_raw
    data = fn.data.get_digits_data()
    assert {k: v.shape for k, v in data.items()} == {
        "X_train": (1297, 1, 8, 8), "y_train": (1297,), "X_val": (250, 1, 8, 8), "y_val": (250,),
        "X_test": (250, 1, 8, 8), "y_test": (250,)}
    mean = images[:1297].mean(axis=0)
    np.testing.assert_allclose(data["X_train"][:, 0], images[:1297] - mean, atol=1e-12)
    np.testing.assert_allclose(data["X_val"][:, 0], images[1297:1547] - mean, atol=1e-12)
    np.testing.assert_allclose(data["X_test"][:, 0], images[1547:] - mean, atol=1e-12)
    assert data["y_test"].tolist() == target[1547:].tolist()
    assert data["y_train"].dtype == np.int64


def test_digits_custom_split_and_limits(digits_raw):
    images, _ = digits_raw
    data = fn.data.get_digits_data(100, 20, 30, subtract_mean=False, dtype=np.float32)
    assert data["X_train"].dtype == np.float32
    np.testing.assert_array_equal(data["X_val"][:, 0], images[100:120])
    np.testing.assert_array_equal(data["X_test"][:, 0], images[120:150])
    with pytest.raises(ValueError, match="1800.*1797"):
        fn.data.get_digits_data(1500, 200, 100)
    with pytest.raises(ValueError, match="num_training"):
        fn.data.get_digits_data(0)


def test_dtype_that_cannot_hold_the_centred_pixels_is_refused(digits_raw):
    # uint8 wrapped below zero, int64 truncated the mean: silently wrong pixels
    for dtype in (np.uint8, np.int64, np.complex128, object):
        with pytest.raises(TypeError, match="dtype must be a float dtype with subtract_mean"):
            fn.data.get_digits_data(dtype=dtype)
    raw = fn.data.get_digits_data(100, 0, 0, subtract_mean=False, dtype=np.uint8)
    np.testing.assert_array_equal(raw["X_train"][:, 0], digits_raw[0][:100])
    with pytest.raises(TypeError, match=r"real \(float or integer\) dtype, got complex128"):
        fn.data.get_digits_data(subtract_mean=False, dtype=np.complex128)
