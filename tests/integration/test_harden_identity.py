"""Client ids bound to identities on loopback (issue 18, part 5): under mutual TLS a certificate
serves only the client ids it names (SAN ``fedkit:client:N``) and a CA certificate is no worker;
in plaintext mode an enrolment secret per client id stops a process that registers every id first
from locking the honest workers out."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedkit.net.broker import Assignment, Broker
from fedkit.net.client import CoordinatorClient
from fedkit.net.codec import encode, split
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.identity import (
    ClientIds,
    Enrolment,
    IdentityError,
    client_secret,
    create_secrets,
    identity_of,
    load_enrolment,
    read_secret,
)
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.retry import RetryPolicy
from fedkit.net.service import add_service
from fedkit.net.tls import create_certs, issue_worker
from fedkit.net.transport import Security, make_server

pytestmark = pytest.mark.net

MODEL = {"w": torch.randn(4, 3)}


class Server:
    def __init__(self, security: Security, enrolment: Enrolment | None = None) -> None:
        self.broker = Broker(
            run_id="run-1", max_result_bytes=1 << 20, require_tls_identity=security.tls,
            num_clients=5, enrolment=enrolment,
        )  # fmt: skip
        self.server, port = make_server("127.0.0.1:0", security, max_workers=16)
        add_service(self.server, self.broker)
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.security = security

    def client(self, cid: str, name: str = "", secret: str = "") -> CoordinatorClient:
        return CoordinatorClient(
            self.address, client_id=cid, security=self.security, tls_identity=name,
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.05), enrolment_secret=secret,
        )  # fmt: skip


def refused(cl: CoordinatorClient) -> NetError:
    with pytest.raises(NetError) as e:
        cl.register()
    return e.value


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    create_certs(d, coordinator_hosts=["127.0.0.1"], workers=5)
    issue_worker(d, "site-a", ClientIds.parse("0,2-4"))
    return d


@pytest.fixture
def tls(certs: Path) -> Iterator[Server]:
    s = Server(Security(cert_dir=certs))
    yield s
    s.server.stop(0)


def test_worker_certificates_name_their_client_ids(certs: Path) -> None:
    w3 = identity_of((certs / "worker-3.pem").read_bytes())
    assert w3.name == "worker-3" and "3" in w3.clients and "2" not in w3.clients
    site = identity_of((certs / "site-a.pem").read_bytes())
    assert [c for c in range(6) if c in site.clients] == [0, 2, 3, 4]
    assert str(site.clients) == "0, 2-4"
    with pytest.raises(IdentityError, match="CA certificate"):
        identity_of((certs / "ca.pem").read_bytes())
    with pytest.raises(IdentityError, match="client authentication"):
        identity_of((certs / "coordinator.pem").read_bytes())


def test_one_certificate_cannot_claim_other_client_ids(tls: Server) -> None:
    # the issue's hijack: worker-1's certificate registering clients 0, 2, 3 and 4
    for cid in "0234":
        err = refused(tls.client(cid, "worker-1"))
        assert err.code is ErrorCode.UNAUTHENTICATED and "worker-1" in err.detail
    assert not tls.broker._workers  # nothing was registered
    # the honest owners are not locked out
    for cid in "0234":
        tls.client(cid, f"worker-{cid}").register()
    assert tls.broker.live_clients() == {"0", "2", "3", "4"}


def test_a_certificate_issued_for_several_ids_serves_exactly_those(tls: Server) -> None:
    for cid in "0234":
        tls.client(cid, "site-a").register()
    err = refused(tls.client("1", "site-a"))
    assert err.code is ErrorCode.UNAUTHENTICATED and "0, 2-4" in err.detail
    tls.client("1", "worker-1").register()


def test_the_ca_certificate_is_not_a_client_certificate(tls: Server) -> None:
    # the CA's own certificate verifies against the CA (TLS lets it through): refused by name
    err = refused(tls.client("0", "ca"))
    assert err.code is ErrorCode.UNAUTHENTICATED and "CA certificate" in err.detail
    # the coordinator's (server-auth only) already fails the TLS handshake
    with pytest.raises(Exception):  # noqa: B017 - TLSHandshakeError or UNAVAILABLE
        tls.client("0", "coordinator").register()
    assert not tls.broker._workers


def test_tasks_and_results_need_the_registered_certificate(tls: Server) -> None:
    owner = tls.client("1", "worker-1")
    owner.register()
    thief = tls.client("1", "worker-2")
    thief.run_id, thief.worker_id, thief.token = owner.run_id, owner.worker_id, owner.token
    data = encode(MODEL)
    tls.broker.open_round(1, {"1": Assignment.of(split(data), len(data))}, deadline_s=5,
                          result_check=None)  # fmt: skip
    with pytest.raises(NetError) as e:
        thief.get_task(wait_s=0.5)  # the stolen token does not go with another certificate
    assert e.value.code is ErrorCode.UNAUTHENTICATED
    task = owner.get_task(wait_s=1)
    with pytest.raises(NetError) as e:
        thief.push_result(task, data, compute_s=0)
    assert e.value.code is ErrorCode.UNAUTHENTICATED
    owner.push_result(task, data, compute_s=0)
    assert set(tls.broker.collect(want=1)) == {"1"}


# ------------------------------------------------------------------------ plaintext enrolment
def test_enrolment_secrets_stop_a_squatter(tmp_path: Path) -> None:
    files = create_secrets(tmp_path / "s", clients=5)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    run_secret = bytes.fromhex(read_secret(tmp_path / "s" / "run.secret"))
    # the client secret is HMAC-SHA256(run secret, "fedkit-enrolment\0" || id): 32 bytes, hex
    assert read_secret(tmp_path / "s" / "client-3.secret") == client_secret(run_secret, "3")
    assert len(client_secret(run_secret, "3")) == 64
    assert client_secret(run_secret, "3") != client_secret(run_secret, "4")
    s = Server(Security(), load_enrolment(tmp_path / "s" / "run.secret"))
    try:
        stolen = read_secret(tmp_path / "s" / "client-1.secret")  # one worker's own secret
        for cid in "01234":  # the attacker registers every id first
            for secret in ("", "0" * 64, stolen if cid != "1" else "f" * 64):
                err = refused(s.client(cid, secret=secret))
                assert err.code is ErrorCode.UNAUTHENTICATED and "enrolment" in err.detail
        assert not s.broker._workers
        for cid in "01234":  # the honest workers, each with its own secret, all get in
            s.client(cid, secret=read_secret(tmp_path / "s" / f"client-{cid}.secret")).register()
        assert s.broker.live_clients() == {"0", "1", "2", "3", "4"}
    finally:
        s.server.stop(0)


def test_without_enrolment_loopback_stays_open() -> None:
    s = Server(Security())
    try:
        s.client("2").register()  # the default tests and `fedkit launch` rely on
    finally:
        s.server.stop(0)


def test_client_ids_are_canonical(tls: Server) -> None:
    # "03" is not a second name for client 3 (it would dodge the one-worker-per-id rule)
    for bad in ("03", "+3", "3 ", "٣"):
        assert refused(tls.client(bad, "worker-3")).code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    ("text", "spans"),
    [("3", ((3, 3),)), ("0,2-4", ((0, 0), (2, 4))), ("4-5,0-3", ((0, 5),)), ("1,1", ((1, 1),))],
)
def test_client_id_lists_parse(text: str, spans: tuple[tuple[int, int], ...]) -> None:
    assert ClientIds.parse(text).spans == spans


@pytest.mark.parametrize("text", ["", "a", "4-2", "-1", "1-", "99999999999"])
def test_bad_client_id_lists_are_refused(text: str) -> None:
    with pytest.raises(IdentityError):
        ClientIds.parse(text)


def test_cli_issues_certificates_and_secrets(tmp_path: Path) -> None:
    from fedkit.cli import _mount, app

    _mount()
    runner = CliRunner()
    r = runner.invoke(app, ["certs", "create", "--out", str(tmp_path / "c"),
                            "--coordinator-host", "127.0.0.1", "--workers", "1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["certs", "issue", "--dir", str(tmp_path / "c"), "--name", "multi",
                            "--clients", "5,7-9"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ids = identity_of((tmp_path / "c" / "multi.pem").read_bytes()).clients
    assert ids.spans == ((5, 5), (7, 9))
    r = runner.invoke(app, ["certs", "issue", "--dir", str(tmp_path / "c"), "--name", "ca",
                            "--clients", "1"])  # fmt: skip
    assert r.exit_code == 2 and "not ca" in r.output
    r = runner.invoke(app, ["secrets", "create", "--out", str(tmp_path / "s"), "--clients", "2"])
    assert r.exit_code == 0 and (tmp_path / "s" / "client-1.secret").is_file()


def test_register_request_carries_the_secret() -> None:
    assert "enrolment_secret" in pb.RegisterRequest.DESCRIPTOR.fields_by_name
