"""Secrets stay secret: a recognizable client secret and every token and download link are
searched for in everything a full run produced (DEBUG logs, errors, reprs, cache, outputs)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from cogseg_ml import ClientCredentials, SegmentationClient
from cogseg_ml.dataset import CdfSegmentationDataset
from cogseg_ml.emulator.faults import Fault
from cogseg_ml.labeler import SegmentationLabeler
from cogseg_ml.prompts import FileRef, Prompt
from cogseg_ml.samples import Instance, Sample

SECRET = "cogseg-RECOGNIZABLE-secret-7f3a9c"


def test_no_secret_anywhere(make_emulator, images, tmp_path: Path,
                            caplog: pytest.LogCaptureFixture) -> None:
    emu = make_emulator(faults=[Fault("token_expiry", times=1),
                                Fault("status", status=503, times=3),
                                Fault("item_fail", times=1, message="bad image")])
    emu.state.client_secret = SECRET
    base = emu.config
    assert isinstance(base.credentials, ClientCredentials)
    cfg = base.with_options(credentials=ClientCredentials(
        base.credentials.token_url, base.credentials.client_id, SECRET))
    samples = [Sample(FileRef(external_id=im.name),
                      tuple(Instance(Prompt(box=o.box()), o.category) for o in im.objects))
               for im in images[:3]]
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        lab = SegmentationLabeler(cfg, cache=tmp_path / "cache", workdir=tmp_path / "work",
                                  progress=False)
        rep = lab.label(samples)
        lab.to_coco(tmp_path / "out.json")
        lab.write_back()
        ds = CdfSegmentationDataset(samples, client=cfg, cache=tmp_path / "cache")
        ds[0]
        with SegmentationClient(cfg) as client:
            client.download(images[0].name)
            texts += [repr(client), repr(client._auth), str(client.config)]
        texts += [repr(cfg), str(cfg), repr(cfg.credentials), repr(lab), repr(ds),
                  repr(lab.backend), str(rep.as_dict())]
    assert rep.failed == 1  # the injected item failure is reported, with its reason
    texts += [r.getMessage() for r in caplog.records]
    texts += [logging.Formatter().format(r) for r in caplog.records]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    blob = "\n".join(texts)
    assert caplog.records and "HTTP Request" in blob  # the logs were really captured
    tokens = list(emu.state.tokens)
    links = list(emu.state.links)
    assert tokens and links
    assert SECRET not in blob
    for t in tokens:
        assert t not in blob
    for link in links:
        assert link not in blob  # download URLs are credentials too


def test_tls_verification_is_on_by_default(shared_emulator) -> None:
    cfg = shared_emulator.config
    assert cfg.verify_tls is True
    with SegmentationClient(cfg) as client:
        ctx = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with SegmentationClient(cfg.with_options(verify_tls=False)) as client:
        ctx = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
        assert ctx.verify_mode == ssl.CERT_NONE


# --- credentials never travel over plain HTTP to another machine -------------------------------

def _creds(token_url: str = "https://login.example.com/tenant/oauth2/v2.0/token"
           ) -> ClientCredentials:
    return ClientCredentials(token_url, "client-id", SECRET)


@pytest.mark.parametrize("base_url, token_url, what", [
    ("http://westeurope-1.cognitedata.com", None, "base_url"),
    ("http://10.0.0.7:8000", None, "base_url"),
    ("https://westeurope-1.cognitedata.com", "http://login.example.com/token", "token_url"),
    ("https://westeurope-1.cognitedata.com", "http://192.168.1.20/token", "token_url"),
])
def test_plain_http_to_another_host_is_refused(base_url: str, token_url: str | None,
                                               what: str) -> None:
    from cogseg_ml.config import CdfConfig, StaticToken
    from cogseg_ml.errors import ValidationError

    creds = _creds(token_url) if token_url else StaticToken("t")
    with pytest.raises(ValidationError) as info:
        CdfConfig(project="p", base_url=base_url, credentials=creds)
    msg = str(info.value)
    assert what in msg and "https://" in msg and "allow_insecure_http=True" in msg
    assert SECRET not in msg
    ok = CdfConfig(project="p", base_url=base_url, credentials=creds, allow_insecure_http=True)
    assert ok.allow_insecure_http
    with pytest.raises(ValidationError):  # a copy keeps the rule
        ok.with_options(allow_insecure_http=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "[::1]", "LOCALHOST"])
def test_plain_http_to_loopback_is_allowed(host: str) -> None:
    from cogseg_ml.config import CdfConfig

    cfg = CdfConfig(project="p", base_url=f"http://{host}:8000",
                    credentials=_creds(f"http://{host}:8000/oauth2/token"))
    assert cfg.base_url.startswith("http://")


def test_from_env_needs_the_explicit_opt_in_for_plain_http() -> None:
    from cogseg_ml.config import CdfConfig
    from cogseg_ml.errors import ValidationError

    env = {"COGNITE_PROJECT": "p", "COGNITE_BASE_URL": "http://cdf.internal.example",
           "COGNITE_TOKEN": "t"}
    with pytest.raises(ValidationError) as info:
        CdfConfig.from_env(env)
    assert "COGSEG_ALLOW_INSECURE_HTTP=1" in str(info.value)
    assert CdfConfig.from_env({**env, "COGSEG_ALLOW_INSECURE_HTTP": "1"}).allow_insecure_http
    with pytest.raises(ValidationError):
        CdfConfig.from_env({**env, "COGSEG_ALLOW_INSECURE_HTTP": "0"})


def test_the_emulator_on_a_lan_address_opts_in_to_plain_http(images) -> None:
    """Off loopback, plain HTTP needs the opt-in: the emulator's own configs carry it."""
    import socket

    import pytest

    from cogseg_ml.config import CdfConfig, StaticToken
    from cogseg_ml.emulator.server import Emulator
    from cogseg_ml.errors import ValidationError

    # The refusal needs no interface: a documentation address (TEST-NET-1) is off loopback.
    with pytest.raises(ValidationError):
        CdfConfig(project="p", base_url="http://192.0.2.10:1", credentials=StaticToken("t"))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.254.254.254", 1))  # no packet is sent: this only picks an interface
        ip = s.getsockname()[0]
    except OSError:
        pytest.skip("no non-loopback interface to bind the emulator to")
    finally:
        s.close()
    if ip.startswith("127.") or ip == "0.0.0.0":
        pytest.skip("no non-loopback interface to bind the emulator to")
    with pytest.raises(ValidationError):
        CdfConfig(project="p", base_url=f"http://{ip}:1", credentials=StaticToken("t"))
    with Emulator(images=images[:1], host=ip) as emu:
        assert emu.config.base_url.startswith(f"http://{ip}:")
        assert emu.static_config().allow_insecure_http
