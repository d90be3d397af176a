"""Hostile input against a real server (uvicorn subprocess, Postgres migrated by Alembic): each
is a 4xx naming the problem, costs the server less than 200 MB of resident memory, and writes
nothing to the artifact store; a database or broker that cannot be reached is a JSON 503 with
`Retry-After`, and the server answers again once it is back."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Proc, Stack, free_port, postgres_database
from tests.service.api.test_dataset_uploads import good_arrays, npz_bytes

RSS_BUDGET_MB = 200
TINY_MLP = {"in_features": 64, "hidden": [4], "num_classes": 10}


class TcpProxy:
    """Forwards a local port to Postgres; `cut()` closes it (and every open connection), so
    the server sees its database go away; `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@dataclass
class Server:
    url: str
    proc: Proc
    proxy: TcpProxy
    artifacts: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stored(self) -> set[Path]:
        return {p for p in self.artifacts.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Distributed mode: Postgres through a proxy the test can cut, and a broker URL where
    nothing listens (so sending a message fails)."""
    with postgres_database() as pg:
        url = make_url(pg)
        proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
        proxy.restore()
        stack = Stack(tmp_path_factory.mktemp("hostile"), pg, f"redis://127.0.0.1:{free_port()}/0")
        migrated = stack.cli("db", "upgrade")
        assert migrated.returncode == 0, migrated.stderr
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        stack.env["AUTOCOMPRESS_DATABASE_URL"] = proxied.render_as_string(hide_password=False)
        proc = stack.serve()
        try:
            yield Server(stack.url, proc, proxy, Path(stack.env["AUTOCOMPRESS_ARTIFACT_ROOT"]))
        finally:
            stack.close()
            proxy.cut()


@pytest.fixture(scope="module")
def model_id(server: Server) -> int:
    from safetensors.torch import save

    from operators import build_model

    weights = save({k: v.contiguous() for k, v in build_model("mlp", TINY_MLP).state_dict().items()})
    reply = httpx.post(
        f"{server.url}/v1/models",
        data={"architecture": "mlp", "config": json.dumps(TINY_MLP)},
        files={"weights": ("w.safetensors", weights)},
        timeout=60,
    )
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]


# -- hostile .npz files ----------------------------------------------------------------------

_CHUNK = 1 << 24


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _deflated_zeros(header: bytes, zeros: int) -> tuple[bytes, int]:
    """A raw deflate stream of `header` then `zeros` zero bytes, and its CRC-32: one 16 MiB
    block of zeros is compressed once and repeated (each block stands alone after a full
    flush), so a gigabyte costs about a megabyte and no time."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(header)
    chunk = bytes(min(_CHUNK, zeros))
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH) if zeros >= _CHUNK else b""
    for _ in range(zeros // _CHUNK):
        parts.append(block)
        crc = zlib.crc32(chunk, crc)
    rest = bytes(zeros % _CHUNK)
    parts.append(co.compress(rest) + co.flush())
    return b"".join(parts), zlib.crc32(rest, crc)


def zip_of_zeros(members: dict[str, tuple[bytes, int]]) -> bytes:
    """A zip (no zip64; each member under 4 GiB) of members `name: (header, zero bytes)`."""
    out, central = io.BytesIO(), []
    for name, (header, zeros) in members.items():
        data, crc = _deflated_zeros(header, zeros)
        size, encoded = len(header) + zeros, name.encode()
        fixed = struct.pack("<HHHHHIII", 20, 0, 8, 0, 0x21, crc, len(data), size)
        central.append((out.tell(), fixed, encoded))
        out.write(b"PK\x03\x04" + fixed + struct.pack("<HH", len(encoded), 0) + encoded + data)
    start = out.tell()
    for offset, fixed, encoded in central:
        out.write(b"PK\x01\x02" + struct.pack("<H", 20) + fixed)
        out.write(struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    size = out.tell() - start
    out.write(b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(central), len(central), size, start, 0))
    return out.getvalue()


def honest_zeros(x_train_shape: tuple[int, ...]) -> bytes:
    """An `.npz` of zeros whose headers tell the truth: x_train uint8 of `x_train_shape`."""
    n = x_train_shape[0]
    return zip_of_zeros({
        "x_train.npy": (_npy_header(x_train_shape, "|u1"), int(np.prod(x_train_shape))),
        "y_train.npy": (_npy_header((n,), "<i8"), 8 * n),
        "x_val.npy": (_npy_header((2, *x_train_shape[1:]), "|u1"), 2 * int(np.prod(x_train_shape[1:]))),
        "y_val.npy": (_npy_header((2,), "<i8"), 16),
    })  # fmt: skip


def lying_header() -> bytes:
    """x_train's header says 10x10 bytes, its zip entry inflates to a gigabyte."""
    members = {n: (_npy_header(s, d), z) for n, s, d, z in [
        ("x_train.npy", (10, 10), "|u1", 10**9),
        ("y_train.npy", (10,), "<i8", 80),
        ("x_val.npy", (2, 10), "|u1", 20),
        ("y_val.npy", (2,), "<i8", 16),
    ]}  # fmt: skip
    return zip_of_zeros(members)


def corrupt_crc() -> bytes:
    """A good `.npz` with one byte of x_train's compressed data changed."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **good_arrays())
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("x_train.npy")
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    return bytes(data)


def many_members() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in good_arrays().items():
            zf.writestr(f"{name}.npy", npz_member(array))
        for i in range(100):
            zf.writestr(f"pad{i}", b"")
    return buf.getvalue()


def npz_member(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def upload(make: Callable[..., bytes], *args: object) -> Callable[[str], httpx.Response]:
    """POST /v1/datasets of `make(*args)`, built when the test runs (not at collection)."""
    return lambda url: httpx.post(
        f"{url}/v1/datasets", files={"file": ("d.npz", make(*args))}, timeout=60
    )


def pickled() -> bytes:
    return npz_bytes(**{**good_arrays(), "x_train": np.array([{}] * 40, dtype=object)})


def truncated() -> bytes:
    return npz_bytes(**good_arrays())[:300]


def get(path: str) -> Callable[[str], httpx.Response]:
    return lambda url: httpx.get(f"{url}{path}", timeout=30)


def post_json(path: str, body: dict) -> Callable[[str], httpx.Response]:
    return lambda url: httpx.post(f"{url}{path}", json=body, timeout=30)


HUGE_MLP = {"in_features": 784, "hidden": [100000, 100000], "num_classes": 10}

# (what, request, status, field at fault or None, words the detail must contain)
HOSTILE = [
    ("zip bomb: zeros declaring 1e9 elements", upload(honest_zeros, (10**6, 1000)), 422, "file", "limit"),
    ("header says 100 bytes, entry inflates to 1 GB", upload(lying_header), 422, "file", "holds"),
    ("empty file", upload(bytes), 422, "file", "not a zip"),
    ("truncated .npz", upload(truncated), 422, "file", "npz"),
    ("object dtype (a pickle)", upload(pickled), 422, "file", "pickle"),
    ("corrupt data (bad CRC)", upload(corrupt_crc), 422, "file", "npz"),
    ("a hundred zip members", upload(many_members), 422, "file", "members"),
    ("job id 2^31", get("/v1/jobs/2147483648"), 404, None, "not found"),
    ("trial id 2^66", get("/v1/trials/73786976294838206464/checkpoint"), 404, None, "not found"),
    ("model id 0", get("/v1/models/0"), 404, None, "not found"),
    ("dataset id -1", get("/v1/datasets/-1"), 404, None, "not found"),
    ("cancel job 2^31", post_json("/v1/jobs/2147483648/cancel", {}), 404, None, "not found"),
    ("limit=-1", get("/v1/jobs?limit=-1"), 422, "query.limit", "greater"),
    ("cursor 2^31", get("/v1/jobs?cursor=2147483648"), 422, "query.cursor", "cursor"),
    ("body model_id 2^31", post_json("/v1/jobs", {"model_id": 2**31, "dataset": "builtin:digits", "objective": {}, "search_space": {}}), 422, "body.model_id", "less"),
    ("mlp of 1e10 parameters", lambda url: httpx.post(f"{url}/v1/models", data={"architecture": "mlp", "config": json.dumps(HUGE_MLP)}, files={"weights": ("w.safetensors", b"{}")}, timeout=60), 422, "config", "param"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "send", "status", "field", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_a_4xx_naming_it_and_costs_nothing(  # noqa: PLR0913
    server: Server, what: str, send: Callable, status: int, field: str | None, words: str
) -> None:
    before, rss = server.stored(), server.rss_mb()
    reply = send(server.url)
    grown = server.rss_mb() - rss
    print(f"HOSTILE | {what} | {reply.status_code} | {grown:.1f} MB")
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert words.lower() in body["detail"].lower(), body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    assert grown < RSS_BUDGET_MB
    assert server.stored() == before


def test_an_honest_npz_of_zeros_is_accepted_and_described_from_its_headers(server: Server) -> None:
    reply = upload(honest_zeros, (10, 10))(server.url)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert (body["train_samples"], body["input_shape"], body["num_classes"]) == (10, [10], 1)
    assert httpx.get(f"{server.url}/v1/datasets/{body['id']}").json() == body


def test_an_unknown_dataset_upload_id_in_a_job_is_a_422(server: Server, model_id: int) -> None:
    spec = {"model_id": model_id, "dataset": "upload:99999999999", "objective": {}, "search_space": {}}
    reply = post_json("/v1/jobs", spec)(server.url)
    assert reply.status_code == 422 and reply.json()["errors"][0]["field"] == "body.dataset"


def test_a_wrong_method_is_405_with_allow(server: Server) -> None:
    reply = httpx.delete(f"{server.url}/v1/jobs/1")
    assert reply.status_code == 405 and reply.headers["allow"] == "GET"
    assert reply.json() == {"detail": "Method Not Allowed", "errors": []}


JOB = {
    "dataset": "builtin:digits",
    "objective": {"maximize": "compression_ratio"},
    "search_space": {"strategies": [{"name": "p", "steps": [{"op": "prune", "sparsity": 0.5}]}]},
    "budget": {"max_trials": 1},
}


def test_an_unreachable_broker_loses_nothing_and_is_503_with_retry_after(
    server: Server, model_id: int
) -> None:
    reply = post_json("/v1/jobs", {**JOB, "model_id": model_id})(server.url)
    assert reply.status_code == 202, reply.text  # committed; the sweeper sends it later
    job_id = reply.json()["id"]
    reply = post_json(f"/v1/jobs/{job_id}/cancel", {})(server.url)  # committed, then sent
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == "5" and "broker" in reply.json()["detail"]
    jobs = httpx.get(f"{server.url}/v1/jobs").json()
    assert [j["id"] for j in jobs] == [job_id]  # the row is the truth; nothing lost


def test_an_unreachable_database_is_503_with_retry_after_then_recovers(server: Server) -> None:
    server.proxy.cut()
    try:
        for path in ("/v1/jobs", "/v1/jobs/1", "/v1/models/1"):
            reply = httpx.get(f"{server.url}{path}", timeout=60)
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5" and "database" in reply.json()["detail"]
        before = server.stored()
        reply = upload(lambda: npz_bytes(**good_arrays()))(server.url)
        assert reply.status_code == 503, reply.text
        assert server.stored() == before  # checked, then not kept: its row could not be written
    finally:
        server.proxy.restore()
    assert httpx.get(f"{server.url}/v1/jobs", timeout=60).status_code == 200
