"""What `fedsim images build` lends a build, without Docker: the host's pip settings (local
folders served on loopback, nothing outside them), the CPU torch pair chosen only when
both wheels are there, the Debian archive read from apt's sources, and the digest that
makes an image from older inputs rebuilt."""

import urllib.error
import urllib.request

import pytest

from lab.images import PipConfig, cpu_torch_pins, lent_pip_config, source_digest


def _wheel(folder, name):
    (folder / name).write_bytes(b"wheel")


def test_a_cpu_torch_pair_is_pinned_only_when_both_wheels_are_there(tmp_path):
    _wheel(tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    cfg = PipConfig(find_links=[str(tmp_path)])
    assert cpu_torch_pins(cfg) == []  # PyPI's torchvision would not import beside it
    _wheel(tmp_path, "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    _wheel(tmp_path, "torch-2.9.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert cpu_torch_pins(cfg) == ["torch==2.13.0+cpu", "torchvision==0.28.0+cpu"]


def test_local_indexes_are_lent_over_loopback_and_nothing_else(tmp_path):
    index = tmp_path / "pypi" / "simple"
    (index / "pkg").mkdir(parents=True)
    (tmp_path / "pypi" / "files").mkdir()
    (tmp_path / "pypi" / "files" / "pkg-1.0.whl").write_bytes(b"x" * 10)
    (index / "pkg" / "index.html").write_text('<a href="../../files/pkg-1.0.whl">pkg</a>')
    (tmp_path / "secret.txt").write_text("no")
    cert = tmp_path / "ca.pem"
    cert.write_text("CA\n")
    cfg = PipConfig(extra_index_urls=[f"file://{index}", "https://example.org/simple"],
                    constraints=["torch<=2.14.1"], cert=cert)
    with lent_pip_config(cfg) as args:
        local, remote = args["PIP_EXTRA_INDEX_URL"].split()
        assert local.startswith("http://127.0.0.1:") and remote == "https://example.org/simple"
        page = urllib.request.urlopen(local + "pkg/").read().decode()
        assert "../../files/pkg-1.0.whl" in page
        assert urllib.request.urlopen(local + "../files/pkg-1.0.whl").read() == b"x" * 10
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(local + "../../secret.txt")
        assert urllib.request.urlopen(args["PIP_CONSTRAINT"]).read() == b"torch<=2.14.1\n"
        assert urllib.request.urlopen(args["PIP_CERT_URL"]).read() == b"CA\n"
        assert "127.0.0.1" in args["PIP_TRUSTED_HOST"].split()
    with pytest.raises(urllib.error.URLError):  # served only while the build runs
        urllib.request.urlopen(local + "pkg/", timeout=5)


def test_an_image_digest_follows_its_inputs(tmp_path, monkeypatch):
    import lab.images

    monkeypatch.setattr(lab.images, "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    before = source_digest(tmp_path / "pkg")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"cache")
    assert source_digest(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path / "pkg") != before
    assert source_digest(tmp_path / "pkg", extra="1.42.0") != source_digest(tmp_path / "pkg")


def test_the_debian_archive_comes_from_apts_sources(tmp_path):
    from lab.images import apt_mirror

    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (sources / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian "
                                           "bookworm main\n")
    assert apt_mirror("bookworm", tmp_path) == "http://old.example/debian"
